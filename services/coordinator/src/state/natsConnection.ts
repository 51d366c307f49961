/**
 * The coordinator's NATS connection: credentials from configuration, and a client that never
 * stops reconnecting, because DESIGN §5 expects NATS to go away for a while and come back.
 * ConnectionWatch turns the client's status stream into "is it up now?", so that the job store
 * and the event log fall back to their local copies at once instead of waiting out a timeout.
 */
import { readFileSync } from "node:fs";
import {
  connect, credsAuthenticator, errors, type NatsConnection, type NodeConnectionOptions, type Status,
} from "@nats-io/transport-node";
import { JetStreamApiError, JetStreamError } from "@nats-io/jetstream";
import { InvalidArgumentError } from "../../../core/src/index.js";
import { NatsAuthError, StateUnavailableError } from "./errors.js";

/** How the coordinator proves itself to NATS: one of user/password, token or a .creds file. */
export interface NatsAuth {
  user?: string;
  password?: string;
  token?: string;
  /** a NATS .creds file (user JWT and nkey seed) */
  credsFile?: string;
}

export interface NatsConfig extends NatsAuth {
  /** nats://host:port, one or several */
  servers: string | string[];
  /** shows in the server's monitoring pages */
  name?: string;
  /** pause between reconnect attempts; small so that state catches up soon after NATS is back */
  reconnectTimeWaitMs?: number;
  /** handshake timeout of the first connection */
  connectTimeoutMs?: number;
  /** keep trying the first connection instead of failing when no server answers */
  waitForFirstConnect?: boolean;
}

function authOptions(cfg: NatsAuth): Partial<NodeConnectionOptions> {
  if (cfg.credsFile) {
    const file = cfg.credsFile;
    let creds: Uint8Array;
    try {
      creds = readFileSync(file);
    } catch (err) {
      throw new InvalidArgumentError("nats.credsFile", `cannot read ${file} (${(err as Error).message})`);
    }
    // Read again on every (re)connect, so a rotated creds file is picked up without a restart.
    return {
      authenticator: credsAuthenticator(() => {
        try {
          creds = readFileSync(file);
        } catch {
          // keep the last readable version
        }
        return creds;
      }),
    };
  }
  if (cfg.user !== undefined) return { user: cfg.user, pass: cfg.password ?? "" };
  if (cfg.token !== undefined) return { token: cfg.token };
  return {};
}

export async function connectNats(cfg: NatsConfig): Promise<NatsConnection> {
  const servers = Array.isArray(cfg.servers) ? cfg.servers.join(",") : cfg.servers;
  try {
    return await connect({
      servers: cfg.servers,
      name: cfg.name ?? "atvp-coordinator",
      maxReconnectAttempts: -1,
      reconnectTimeWait: cfg.reconnectTimeWaitMs ?? 250,
      reconnectJitter: 100,
      timeout: cfg.connectTimeoutMs ?? 5000,
      waitOnFirstConnect: cfg.waitForFirstConnect ?? false,
      // An auth failure after a restart (credentials being rotated) must not end the reconnecting.
      ignoreAuthErrorAbort: true,
      ...authOptions(cfg),
    });
  } catch (err) {
    if (err instanceof errors.AuthorizationError || err instanceof errors.UserAuthenticationExpiredError) {
      throw new NatsAuthError(servers, "NATS refused the connection: check nats user/password, token or credsFile", { cause: err });
    }
    throw new StateUnavailableError(servers, `cannot connect to NATS (${(err as Error).message})`, { cause: err });
  }
}

/**
 * True for failures that mean "NATS (or its JetStream) is not reachable right now", after which
 * the same call may succeed later; false for answers the server really gave (wrong revision,
 * no such stream) and for bugs.
 */
export function isUnavailable(err: unknown): boolean {
  if (
    err instanceof errors.TimeoutError ||
    err instanceof errors.NoRespondersError ||
    err instanceof errors.RequestError ||
    err instanceof errors.ConnectionError ||
    err instanceof errors.ClosedConnectionError ||
    err instanceof errors.DrainingConnectionError
  ) {
    return true;
  }
  // 503: JetStream not (yet) up on a server that has just restarted; 408: request timed out there.
  if (err instanceof JetStreamApiError) return err.status === 503 || err.status === 408;
  if (err instanceof JetStreamError) {
    const code = (err as { code?: unknown }).code;
    return code === 503 || code === 408;
  }
  // What a JetStream publish reports when nothing answers its subject: JetStream still starting,
  // or its stream gone with a lost store. The class is not exported by @nats-io/jetstream.
  return err instanceof Error && err.name === "JetStreamNotEnabled";
}

/** Follows the connection's status; `up` is false from a disconnect until the next reconnect. */
/** Retry pauses while NATS is away: short at first so state catches up soon after it is back. */
export const RETRY_BACKOFF_MS = [100, 200, 400, 800, 1600, 3200, 5000] as const;

export function retryDelay(attempt: number): number {
  return RETRY_BACKOFF_MS[Math.min(attempt, RETRY_BACKOFF_MS.length - 1)]!;
}

export class ConnectionWatch {
  #up: boolean;
  #reconnects = 0;
  readonly #listeners = new Set<() => void>();
  /** typed as AsyncIterable, but the client's iterator has stop(), which unregisters it */
  readonly #status: AsyncIterable<Status> & { stop?: () => void };

  constructor(nc: NatsConnection) {
    this.#up = !nc.isClosed();
    const status = nc.status();
    this.#status = status;
    void (async () => {
      for await (const s of status) {
        switch (s.type) {
          case "disconnect":
          case "staleConnection":
          case "close":
            this.#up = false;
            break;
          case "reconnect":
            this.#up = true;
            this.#reconnects++;
            for (const fn of [...this.#listeners]) fn();
            break;
          default:
            break;
        }
      }
      this.#up = false;
    })();
    void nc.closed().then(() => {
      this.#up = false;
      for (const fn of [...this.#listeners]) fn();
    });
  }

  get up(): boolean {
    return this.#up;
  }

  /** Counts reconnects: a retry loop that sees it change starts its backoff over. */
  get reconnects(): number {
    return this.#reconnects;
  }

  /** Calls fn after each reconnect (and once when the connection closes); returns an unsubscribe. */
  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Waits `ms` (a retry backoff), cut short when the connection comes back or `signal` aborts. */
  pause(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        off();
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      const off = this.onChange(done);
      if (signal?.aborted) done();
      else signal?.addEventListener("abort", done);
    });
  }

  stop(): void {
    this.#listeners.clear();
    this.#status.stop?.();
  }
}
