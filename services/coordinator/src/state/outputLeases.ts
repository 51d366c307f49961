/**
 * One job per output folder across the cluster: a lease per folder in its own JetStream KV
 * bucket (key = hash of the folder's real path), taken with compare-and-set create at submit,
 * renewed while the job runs and released when it ends. Entries expire after `ttlMs` without a
 * renewal (the bucket's max age), so the lease of a coordinator that died and never came back
 * lapses; a restarted coordinator resuming a job re-takes that job's own lease.
 */
import { createHash } from "node:crypto";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, StorageType } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { OutputLockedError } from "../../../core/src/index.js";
import { StateUnavailableError } from "./errors.js";
import { isWrongRevision } from "./jobStore.js";
import { isUnavailable } from "./natsConnection.js";

export interface LeaseValue {
  jobId: string;
  /** the real path of the output folder */
  out: string;
  renewedUnixMs: number;
}

export interface OutputLeaseOptions {
  /** KV bucket name (default "atvp_output_leases") */
  bucket?: string;
  /** a lease not renewed for this long lapses (default 120 s) */
  ttlMs?: number;
  /** per-request timeout against NATS (default 2000 ms) */
  timeoutMs?: number;
}

/** A lease being kept: renewed on a timer until released (job ended) or stopped (coordinator leaving). */
export interface HeldLease {
  release(): Promise<void>;
  stop(): void;
}

export function leaseKey(out: string): string {
  return createHash("sha256").update(out).digest("hex");
}

function decode(value: Uint8Array): LeaseValue | undefined {
  try {
    const v = JSON.parse(new TextDecoder().decode(value)) as Partial<LeaseValue>;
    return typeof v.jobId === "string" && typeof v.out === "string" ? { jobId: v.jobId, out: v.out, renewedUnixMs: Number(v.renewedUnixMs ?? 0) } : undefined;
  } catch {
    return undefined;
  }
}

function lockedBy(out: string, jobId: string): OutputLockedError {
  return new OutputLockedError(out, `is the output folder of job ${jobId}, which is still running; wait for it to end, cancel it, or choose another --out folder`, jobId);
}

export class OutputLeases {
  readonly ttlMs: number;
  /**
   * The leases this coordinator's jobs hold (folder → job): while NATS is unreachable a submit
   * is still checked against them, and the bucket lease is taken by the next renewal.
   */
  private readonly local = new Map<string, string>();

  private constructor(
    private readonly kv: KV,
    private readonly ensureBucket: () => Promise<unknown>,
    private readonly timeoutMs: number,
    ttlMs: number,
    private readonly log: (m: string) => void,
  ) {
    this.ttlMs = ttlMs;
  }

  static async open(nc: NatsConnection, opts: OutputLeaseOptions = {}, log: (m: string) => void = () => {}): Promise<OutputLeases> {
    const bucket = opts.bucket ?? "atvp_output_leases";
    const timeout = opts.timeoutMs ?? 2000;
    const ttlMs = opts.ttlMs ?? 120_000;
    const ensureBucket = () => new Kvm(jetstream(nc, { timeout })).create(bucket, { history: 1, ttl: ttlMs, storage: StorageType.File, timeout });
    try {
      return new OutputLeases(await ensureBucket(), ensureBucket, timeout, ttlMs, log);
    } catch (err) {
      throw new StateUnavailableError(`bucket ${bucket}`, `cannot open the output lease bucket (${(err as Error).message})`, { cause: err });
    }
  }

  /** The job holding the lease on `out` (a real path), if any. */
  async holder(out: string): Promise<LeaseValue | undefined> {
    const entry = await this.kv.get(leaseKey(out));
    return entry && entry.operation === "PUT" ? decode(entry.value) : undefined;
  }

  /**
   * Takes the lease on `out` for `jobId`: free, already this job's, or held by a job that
   * `isLive` says has ended. Otherwise OutputLockedError naming the holder.
   */
  async acquire(out: string, jobId: string, isLive: (holder: string) => Promise<boolean>): Promise<void> {
    const mine = this.local.get(out);
    if (mine !== undefined && mine !== jobId && (await isLive(mine))) throw lockedBy(out, mine);
    try {
      await this.acquireInBucket(out, jobId, isLive);
    } catch (err) {
      if (!isUnavailable(err)) throw err;
      // A NATS that lost its store lost the bucket with it (writes then find no responder).
      await this.ensureBucket().catch(() => {});
      try {
        await this.acquireInBucket(out, jobId, isLive);
      } catch (again) {
        if (!isUnavailable(again)) throw again;
        this.log(`job ${jobId}: output lease on ${out} kept locally while NATS is unreachable (${(again as Error).message})`);
      }
    }
    this.local.set(out, jobId);
  }

  private async acquireInBucket(out: string, jobId: string, isLive: (holder: string) => Promise<boolean>): Promise<void> {
    const key = leaseKey(out);
    const value = (): Uint8Array => new TextEncoder().encode(JSON.stringify({ jobId, out, renewedUnixMs: Date.now() } satisfies LeaseValue));
    for (let round = 0; round < 5; round++) {
      try {
        await this.kv.create(key, value());
        return;
      } catch (err) {
        if (!isWrongRevision(err)) throw err;
      }
      const entry = await this.kv.get(key);
      if (!entry) continue; // expired between the two calls
      const held = entry.operation === "PUT" ? decode(entry.value) : undefined;
      if (held && held.jobId !== jobId && (await isLive(held.jobId))) throw lockedBy(out, held.jobId);
      try {
        await this.kv.update(key, value(), entry.revision, this.timeoutMs);
        return;
      } catch (err) {
        if (!isWrongRevision(err)) throw err;
      }
    }
    throw new OutputLockedError(out, "its lease keeps changing hands; try again", "unknown");
  }

  /** Renews `jobId`'s lease on `out` every third of the TTL (re-taking it if it lapsed) until released or stopped. */
  keep(out: string, jobId: string, isLive: (holder: string) => Promise<boolean>): HeldLease {
    let stopped = false;
    let inflight: Promise<void> = Promise.resolve();
    const renew = () => {
      if (stopped) return;
      inflight = inflight.then(() => (stopped ? undefined : this.acquire(out, jobId, isLive))).catch((err: unknown) => {
        this.log(`job ${jobId}: output lease on ${out} not renewed: ${(err as Error).message}`);
      });
    };
    const timer = setInterval(renew, Math.max(100, Math.floor(this.ttlMs / 3)));
    timer.unref();
    renew(); // at once: a resumed job re-takes its lease before its first renewal is due
    return {
      stop: () => {
        stopped = true;
        clearInterval(timer);
      },
      release: async () => {
        if (stopped) return;
        stopped = true;
        clearInterval(timer);
        await inflight; // a renewal in flight must not re-create the lease after it is removed
        if (this.local.get(out) === jobId) this.local.delete(out);
        try {
          const key = leaseKey(out);
          const entry = await this.kv.get(key);
          const held = entry && entry.operation === "PUT" ? decode(entry.value) : undefined;
          if (held?.jobId === jobId) await this.kv.purge(key, { previousSeq: entry!.revision });
        } catch (err) {
          // It lapses by itself after the TTL.
          this.log(`job ${jobId}: output lease on ${out} not released: ${(err as Error).message}`);
        }
      },
    };
  }
}
