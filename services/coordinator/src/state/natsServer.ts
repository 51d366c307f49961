/**
 * A local nats-server with JetStream, for tests and `atvp cluster up`: started from PATH on
 * loopback with a file store, so job state and events outlive a restart of it. restart() keeps
 * the port and the store, which is how tests take NATS away in the middle of a job.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, mkdirSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { delimiter, join } from "node:path";
import { NatsServerError } from "./errors.js";

export interface NatsServerOptions {
  /** JetStream store folder (created if missing); the server config is written here too */
  dir: string;
  /** client port on 127.0.0.1; 0 or absent picks a free one */
  port?: number;
  /** with password: clients must present these */
  user?: string;
  password?: string;
  /** alternative to user/password */
  token?: string;
  /** how long start (and restart) wait for the server to accept connections */
  readyTimeoutMs?: number;
}

export interface NatsServerHandle {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** the current process (changes on restart) */
  readonly pid: number;
  /** SIGTERM, then wait for the exit (SIGKILL if it does not come) */
  stop(): Promise<void>;
  /** stop, then start again on the same port and store */
  restart(): Promise<void>;
}

const HOST = "127.0.0.1";
const STOP_GRACE_MS = 5000;
const INSTALL_HINT = "install nats-server: apt-get install -y nats-server";

function findOnPath(name: string): string {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this folder
    }
  }
  throw new NatsServerError(name, `not found on PATH; ${INSTALL_HINT}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host: HOST, port });
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
    sock.setTimeout(500, () => {
      sock.destroy();
      resolve(false);
    });
  });
}

/** The config goes in a file (mode 0600) so that credentials never show in `ps`. */
function writeConfig(opts: NatsServerOptions, port: number): string {
  const q = (s: string) => JSON.stringify(s);
  const lines = [`listen: ${q(`${HOST}:${port}`)}`, `jetstream { store_dir: ${q(opts.dir)} }`];
  if (opts.user !== undefined) {
    lines.push(`authorization { user: ${q(opts.user)}, password: ${q(opts.password ?? "")} }`);
  } else if (opts.token !== undefined) {
    lines.push(`authorization { token: ${q(opts.token)} }`);
  }
  const path = join(opts.dir, "nats-server.conf");
  writeFileSync(path, lines.join("\n") + "\n", { mode: 0o600 });
  return path;
}

export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServerHandle> {
  const bin = findOnPath("nats-server");
  mkdirSync(opts.dir, { recursive: true });
  const port = opts.port && opts.port > 0 ? opts.port : await freePort();
  const url = `nats://${HOST}:${port}`;
  const config = writeConfig(opts, port);
  const readyTimeoutMs = opts.readyTimeoutMs ?? 15_000;
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    const proc = spawn(bin, ["-c", config], { stdio: ["ignore", "ignore", "pipe"] });
    // Keep the log tail for error messages; reading it also keeps the pipe from filling up.
    let logTail = "";
    proc.stderr?.on("data", (chunk: Buffer) => {
      logTail = (logTail + chunk.toString("utf8")).slice(-4000);
    });
    let exited: string | undefined;
    proc.once("exit", (code, signal) => (exited = `exited (${signal ?? code})`));
    proc.once("error", (err) => (exited = `could not run ${bin} (${err.message})`));
    child = proc;
    process.off("exit", killOnExit);
    process.on("exit", killOnExit);
    const deadline = Date.now() + readyTimeoutMs;
    while (Date.now() < deadline) {
      if (exited) break;
      if (await canConnect(port)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    proc.kill("SIGKILL");
    throw new NatsServerError(
      url,
      `${exited ?? `not accepting connections after ${readyTimeoutMs} ms`}; log tail:\n${logTail.trim()}`,
    );
  };

  // A test that dies without stop() must not leave a server holding the port.
  const killOnExit = () => child?.kill("SIGKILL");

  const stop = async (): Promise<void> => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exit = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
    proc.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), STOP_GRACE_MS)));
    if ((await Promise.race([exit, late])) === "late") {
      proc.kill("SIGKILL");
      await exit;
    }
    clearTimeout(timer);
  };

  await launch();
  return {
    url,
    port,
    get pid() {
      return child?.pid ?? -1;
    },
    async stop() {
      await stop();
      process.off("exit", killOnExit);
    },
    async restart() {
      await stop();
      await launch();
    },
  };
}
