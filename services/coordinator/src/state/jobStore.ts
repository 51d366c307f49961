/**
 * Job state in a JetStream KV bucket (key = job id, value = the protobuf Job), so a restarted
 * coordinator resumes where the last one stopped. Every write is compare-and-set on the key's
 * revision, so concurrent writers never lose each other's changes.
 *
 * NATS may go away for a while (DESIGN §5) and the pipeline must not stall on it: the store keeps
 * a local copy of every job it wrote or read; while NATS is unreachable, create() and update()
 * apply to that copy at once (reads see them) and a background flusher writes the latest local
 * state of each such job once NATS is back. A job is never dropped on the floor.
 */
import { clone, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstream, JetStreamApiCodes, JetStreamApiError, StorageType } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { JobSchema, type Job } from "../../../gen/atvprune/v1/job_pb.js";
import { InvalidArgumentError } from "../../../core/src/index.js";
import { ConnectionWatch, isUnavailable, retryDelay } from "./natsConnection.js";
import {
  JobConflictError, JobExistsError, JobNotFoundError, StateError, StateUnavailableError,
} from "./errors.js";

export interface JobStoreOptions {
  /** KV bucket name (default "atvp_jobs") */
  bucket?: string;
  /** per-request timeout against NATS (default 2000 ms) */
  timeoutMs?: number;
  /** revisions kept per job (default 5) */
  history?: number;
  /** compare-and-set rounds before update() gives up with JobConflictError (default 100) */
  maxCasRounds?: number;
  /** background write failures that are not outages (the job stays queued and is retried) */
  onError?: (err: StateError) => void;
}

/** Job ids are KV keys and one NATS subject token each (atvp.jobs.<id>.events). */
const JOB_ID = /^[A-Za-z0-9_-]{1,128}$/;

export function checkJobId(id: string): void {
  if (!JOB_ID.test(id)) {
    throw new InvalidArgumentError(`job ${JSON.stringify(id)}`, "a job id is 1-128 letters, digits, '-' or '_'");
  }
}

interface LocalJob {
  job: Job;
  /** KV revision this copy is based on; 0 = not known to be in the bucket yet */
  revision: number;
  /** local changes that the bucket does not have yet */
  dirty: boolean;
}

/** A compare-and-set write lost: the key's revision is not the one given. */
export function isWrongRevision(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/** Serialises the operations on one job inside this process; other processes are held off by CAS. */
class KeyedLock {
  readonly #tails = new Map<string, Promise<void>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const tail = prev.then(() => new Promise<void>((r) => (release = r)));
    this.#tails.set(key, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    }
  }
}

export class JobStore {
  readonly bucket: string;
  readonly #kv: KV;
  /** Recreates the bucket's stream if a NATS came back without its store. */
  readonly #ensureBucket: () => Promise<KV>;
  readonly #conn: ConnectionWatch;
  readonly #timeoutMs: number;
  readonly #maxCasRounds: number;
  readonly #onError: (err: StateError) => void;
  readonly #local = new Map<string, LocalJob>();
  readonly #lock = new KeyedLock();
  readonly #closing = new AbortController();
  #flusher: Promise<void> | undefined;
  #flushWaiters: Array<() => void> = [];

  private constructor(bucket: string, kv: KV, ensureBucket: () => Promise<KV>, conn: ConnectionWatch, opts: JobStoreOptions) {
    this.bucket = bucket;
    this.#kv = kv;
    this.#ensureBucket = ensureBucket;
    this.#conn = conn;
    this.#timeoutMs = opts.timeoutMs ?? 2000;
    this.#maxCasRounds = opts.maxCasRounds ?? 100;
    this.#onError = opts.onError ?? (() => {});
  }

  /** Opens (creating if needed) the bucket; needs NATS to be reachable. */
  static async open(nc: NatsConnection, opts: JobStoreOptions = {}): Promise<JobStore> {
    const bucket = opts.bucket ?? "atvp_jobs";
    const timeout = opts.timeoutMs ?? 2000;
    const kvm = new Kvm(jetstream(nc, { timeout }));
    const ensureBucket = () => kvm.create(bucket, { history: opts.history ?? 5, storage: StorageType.File, timeout });
    let kv: KV;
    try {
      kv = await ensureBucket();
    } catch (err) {
      throw new StateUnavailableError(`bucket ${bucket}`, `cannot open the job bucket (${(err as Error).message})`, { cause: err });
    }
    return new JobStore(bucket, kv, ensureBucket, new ConnectionWatch(nc), opts);
  }

  /** Stores a new job; JobExistsError if the id is taken. While NATS is down it is kept locally and queued. */
  async create(job: Job): Promise<Job> {
    checkJobId(job.id);
    this.#checkOpen();
    const copy = clone(JobSchema, job);
    const now = BigInt(Date.now());
    if (copy.createdUnixMs === 0n) copy.createdUnixMs = now;
    if (copy.updatedUnixMs === 0n) copy.updatedUnixMs = copy.createdUnixMs;
    return this.#lock.run(copy.id, async () => {
      if (this.#local.has(copy.id)) throw new JobExistsError(copy.id);
      if (this.#conn.up) {
        try {
          const revision = await this.#kv.create(copy.id, toBinary(JobSchema, copy));
          this.#local.set(copy.id, { job: copy, revision, dirty: false });
          return clone(JobSchema, copy);
        } catch (err) {
          if (isWrongRevision(err)) throw new JobExistsError(copy.id);
          if (!isUnavailable(err)) throw err;
        }
      }
      // NATS is away: whether the id is free can only be known later; ids are unique by
      // construction (the coordinator makes them), so a clash at flush time is resolved for this copy.
      this.#local.set(copy.id, { job: copy, revision: 0, dirty: true });
      this.#kick();
      return clone(JobSchema, copy);
    });
  }

  /** The job, from the bucket when NATS answers, else from the local copy; undefined if unknown. */
  async get(id: string): Promise<Job | undefined> {
    checkJobId(id);
    const local = this.#local.get(id);
    if (local?.dirty) return clone(JobSchema, local.job);
    if (this.#conn.up) {
      try {
        return this.#remember(id, await this.#kv.get(id));
      } catch (err) {
        if (!isUnavailable(err)) throw err;
      }
    }
    if (local) return clone(JobSchema, local.job);
    throw new StateUnavailableError(id, "NATS is unreachable and this coordinator holds no copy of the job");
  }

  /**
   * Applies `mutate` to the latest version of the job and writes it with compare-and-set,
   * re-reading and re-applying when another writer got there first. `mutate` may therefore run
   * more than once, each time on a fresh copy: it must only change the job it is given.
   * While NATS is down (or earlier local changes are still queued) it applies to the local copy.
   */
  async update(id: string, mutate: (job: Job) => void): Promise<Job> {
    checkJobId(id);
    this.#checkOpen();
    return this.#lock.run(id, async () => {
      if (!this.#local.get(id)?.dirty && this.#conn.up) {
        try {
          const written = await this.#updateInBucket(id, mutate);
          if (written) return written;
        } catch (err) {
          if (!isUnavailable(err)) throw err;
        }
      }
      return this.#updateLocally(id, mutate);
    });
  }

  /** The CAS loop; undefined when the bucket lost a job this process knows (then it is re-seeded). */
  async #updateInBucket(id: string, mutate: (job: Job) => void): Promise<Job | undefined> {
    let base = this.#local.get(id);
    for (let round = 0; round < this.#maxCasRounds; round++) {
      if (!base || round > 0) {
        const entry = await this.#kv.get(id);
        if (!entry || entry.operation !== "PUT") {
          const known = this.#local.get(id);
          if (!known) throw new JobNotFoundError(id);
          known.revision = entry?.revision ?? 0;
          return undefined;
        }
        base = this.#adopt(id, entry.value, entry.revision);
      }
      const next = this.#applied(base.job, mutate);
      try {
        const revision = await this.#kv.update(id, toBinary(JobSchema, next), base.revision, this.#timeoutMs);
        this.#local.set(id, { job: next, revision, dirty: false });
        return clone(JobSchema, next);
      } catch (err) {
        if (!isWrongRevision(err)) throw err;
      }
    }
    throw new JobConflictError(id, this.#maxCasRounds);
  }

  /** Applies the change to the local copy and queues it for the flusher. */
  #updateLocally(id: string, mutate: (job: Job) => void): Job {
    const base = this.#local.get(id);
    if (!base) throw new StateUnavailableError(id, "NATS is unreachable and this coordinator holds no copy of the job");
    const next = this.#applied(base.job, mutate);
    this.#local.set(id, { job: next, revision: base.revision, dirty: true });
    this.#kick();
    return clone(JobSchema, next);
  }

  /** Every job: the bucket's, with this process's queued changes on top; the local copies while NATS is down. */
  async list(): Promise<Job[]> {
    const jobs = new Map<string, Job>();
    let fromBucket = false;
    if (this.#conn.up) {
      try {
        const ids: string[] = [];
        for await (const key of await this.#kv.keys()) ids.push(key);
        const entries = await Promise.all(ids.map((id) => this.#kv.get(id)));
        entries.forEach((entry, i) => {
          const job = this.#remember(ids[i]!, entry);
          if (job) jobs.set(job.id, job);
        });
        const listed = new Set(ids);
        for (const id of this.#local.keys()) if (!listed.has(id)) this.#remember(id, null);
        fromBucket = true;
      } catch (err) {
        if (!isUnavailable(err)) throw err;
      }
    }
    for (const [id, local] of this.#local) {
      if (local.dirty || !fromBucket) jobs.set(id, clone(JobSchema, local.job));
    }
    return [...jobs.values()].sort((a, b) =>
      a.createdUnixMs === b.createdUnixMs ? a.id.localeCompare(b.id) : a.createdUnixMs < b.createdUnixMs ? -1 : 1,
    );
  }

  /** Ids of jobs whose latest local state is not in the bucket yet. */
  pending(): string[] {
    return [...this.#local].filter(([, l]) => l.dirty).map(([id]) => id);
  }

  /** Resolves once every queued change is in the bucket; StateUnavailableError after timeoutMs. */
  flushed(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (this.pending().length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        this.#flushWaiters = this.#flushWaiters.filter((w) => w !== done);
        reject(new StateUnavailableError(`bucket ${this.bucket}`, `jobs ${this.pending().join(", ")} not written after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#flushWaiters.push(done);
    });
  }

  /**
   * Stops the flusher after one last bounded try; jobs it could not write are reported through
   * onError (they exist only in this process's memory). Does not close the connection.
   */
  async close(opts: { flushTimeoutMs?: number } = {}): Promise<void> {
    if (this.#closing.signal.aborted) return;
    if (this.pending().length > 0 && this.#conn.up) {
      await this.flushed({ timeoutMs: opts.flushTimeoutMs ?? 2000 }).catch(() => {});
    }
    this.#closing.abort();
    await this.#flusher;
    for (const id of this.pending()) {
      this.#onError(new StateUnavailableError(id, "store closed before this job's latest state reached NATS"));
    }
    this.#conn.stop();
  }

  #checkOpen(): void {
    if (this.#closing.signal.aborted) throw new StateUnavailableError(`bucket ${this.bucket}`, "job store is closed");
  }

  #applied(job: Job, mutate: (job: Job) => void): Job {
    const next = clone(JobSchema, job);
    mutate(next);
    if (next.id !== job.id) throw new InvalidArgumentError(`job ${job.id}`, "update must not change the job id");
    next.updatedUnixMs = BigInt(Date.now());
    return next;
  }

  #adopt(id: string, value: Uint8Array, revision: number): LocalJob {
    const local = { job: fromBinary(JobSchema, value), revision, dirty: false };
    this.#local.set(id, local);
    return local;
  }

  /** Takes a bucket read into the local copy unless that copy is newer (queued, or a later revision). */
  #remember(id: string, entry: Awaited<ReturnType<KV["get"]>>): Job | undefined {
    const local = this.#local.get(id);
    if (local?.dirty) return clone(JobSchema, local.job);
    if (entry?.operation === "PUT") {
      if (local && local.revision >= entry.revision) return clone(JobSchema, local.job);
      return clone(JobSchema, this.#adopt(id, entry.value, entry.revision).job);
    }
    if (!local) return undefined;
    // The bucket lost a job this coordinator knows (a NATS that came back without its store, a
    // purge): jobs never disappear, so the local copy is queued to be written back.
    local.revision = entry?.revision ?? 0;
    local.dirty = true;
    this.#kick();
    return clone(JobSchema, local.job);
  }

  #kick(): void {
    if (this.#flusher || this.#closing.signal.aborted) return;
    this.#flusher = this.#flushLoop().finally(() => {
      this.#flusher = undefined;
      if (this.pending().length > 0 && !this.#closing.signal.aborted) this.#kick();
    });
  }

  async #flushLoop(): Promise<void> {
    let attempt = 0;
    let reconnects = this.#conn.reconnects;
    while (!this.#closing.signal.aborted && this.pending().length > 0) {
      if (reconnects !== this.#conn.reconnects) {
        reconnects = this.#conn.reconnects;
        attempt = 0;
      }
      if (this.#conn.up && (await this.#flushAll())) {
        attempt = 0;
        continue;
      }
      await this.#conn.pause(retryDelay(attempt++), this.#closing.signal);
    }
    if (this.pending().length === 0) {
      const waiters = this.#flushWaiters;
      this.#flushWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** One pass over the queued jobs; false when NATS was unreachable or a write failed. */
  async #flushAll(): Promise<boolean> {
    for (const id of this.pending()) {
      try {
        await this.#lock.run(id, () => this.#writeLocal(id));
      } catch (err) {
        if (isUnavailable(err)) {
          // Up but unanswered: JetStream still starting, or a NATS that lost its store and with
          // it the bucket (writes to a missing stream find no responder); recreate it if so.
          if (this.#conn.up) await this.#ensureBucket().catch(() => {});
          return false;
        }
        this.#onError(
          err instanceof StateError ? err : new StateUnavailableError(id, `writing the job to NATS failed (${(err as Error).message})`, { cause: err }),
        );
        return false;
      }
    }
    return true;
  }

  /**
   * Writes the local copy with CAS against the revision it is based on. On a conflict the bucket
   * changed meanwhile (or a create raced with an existing key): this coordinator's copy is the
   * one its callers saw, so it is written again on top of the current revision.
   */
  async #writeLocal(id: string): Promise<void> {
    const local = this.#local.get(id);
    if (!local?.dirty) return;
    for (let round = 0; round < this.#maxCasRounds; round++) {
      const bytes = toBinary(JobSchema, local.job);
      try {
        local.revision =
          local.revision === 0
            ? await this.#kv.create(id, bytes)
            : await this.#kv.update(id, bytes, local.revision, this.#timeoutMs);
        local.dirty = false;
        return;
      } catch (err) {
        if (!isWrongRevision(err)) throw err;
        const current = await this.#kv.get(id);
        local.revision = current?.revision ?? 0;
      }
    }
    throw new JobConflictError(id, this.#maxCasRounds);
  }
}
