/**
 * The all-gather of data-parallel calibration over gRPC, worker to worker (issue 10 §1): each
 * replica of a stage writes its samples' records of a (block, topic) to the shared work dir,
 * publishes them on its own worker, and pulls every other replica's records, from that replica's
 * file when it is there (a replica that finished and went away leaves it) or else over
 * PullExchange from the replica's worker.
 *
 * Peers come and go as in the pipeline's data plane (upstreamStates.ts): a peer that is not
 * there yet, is restarting or was lost is retried with backoff, a new address named by the
 * coordinator (setPeer) is tried at once, and the work dir is watched meanwhile.
 *
 * Same bits every time: a replica's file, once written, is what everybody gathers for it. A
 * replica rerun after a fault that finds its own file (valid, its samples) gathers from the file
 * instead of its new records, so peers that read the file and the rerun agree.
 */
import type * as grpc from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import { WorkerDataService } from "../../../gen/atvprune/v1/worker_data_pb.js";
import {
  AtvpError, InvalidArgumentError, itemCount, ownedItems, replicaSamples, type ItemShares, type ReplicaSlice, type SampleExchange, type SampleRecord,
} from "../../../core/src/index.js";
import { createClient } from "../../../rpc/index.js";
import { exists } from "../checkpoint/checkpoints.js";
import { ExchangeError } from "../errors.js";
import { checkTopic, exchangePath, readExchangeFile, writeExchangeFile } from "./exchangeFile.js";
import type { ExchangeRegistry } from "./exchangeRegistry.js";
import { checkVectors, expectRecords, RecordAssembler, type ReplicaRecords } from "./exchangeWire.js";

export interface ReplicaExchangeOptions {
  jobId: string;
  /** N: calibration samples of the job */
  samples: number;
  slice: ReplicaSlice;
  /** address of every replica of the stage (index = replica; this replica's own entry is unused) */
  peers: string[];
  /** the job's work dir, shared by all workers */
  workDir: string;
  /** this worker's registry (WorkerHandle.exchanges, ShardRunDeps.exchanges): peers pull from it */
  registry: ExchangeRegistry;
  credentials: grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
  log?: (message: string) => void;
  backoffMs?: { initial: number; max: number };
  /**
   * How often the work dir is checked while a pull waits on a peer (default 10 ms): a peer that
   * is done with the exchange and computing again answers late, but its file is complete.
   */
  fileCheckMs?: number;
}

/**
 * The HTTP/2 window a pull advertises: a peer sends all its records of a topic (a block's masks:
 * ~1 MB here, ~14 MB for an 8B-class block) without waiting for window updates, which its event
 * loop, busy computing once the exchange is over, would answer late.
 */
const EXCHANGE_WINDOW_BYTES = 16 << 20;

/** Statuses no retry can fix: the call is wrong, or this worker is not let in. */
const PERMANENT = new Set<number>([
  status.INVALID_ARGUMENT, status.FAILED_PRECONDITION, status.OUT_OF_RANGE, status.UNAUTHENTICATED,
  status.PERMISSION_DENIED, status.UNIMPLEMENTED, status.RESOURCE_EXHAUSTED, status.DATA_LOSS,
]);

export class GrpcReplicaExchange implements SampleExchange {
  readonly slice: ReplicaSlice;
  private readonly peers: string[];
  /** per replica, the pulls to wake when it moves */
  private readonly moveListeners = new Map<number, Set<() => void>>();

  constructor(private readonly o: ReplicaExchangeOptions) {
    this.slice = { replica: o.slice.replica, replicas: o.slice.replicas };
    replicaSamples(o.samples, o.slice.replicas, o.slice.replica); // checks N, R and r
    if (o.peers.length !== o.slice.replicas) throw new InvalidArgumentError("peers", `names ${o.peers.length} addresses for ${o.slice.replicas} replicas`);
    this.peers = [...o.peers];
    o.registry.openJob(o.jobId, o.workDir);
  }

  /** The coordinator moved replica `replica` to another worker: pulls from it go there at once. */
  setPeer(replica: number, address: string): void {
    if (!(Number.isInteger(replica) && replica >= 0 && replica < this.slice.replicas)) throw new InvalidArgumentError("replica", `must be in [0, ${this.slice.replicas}), got ${replica}`);
    if (this.peers[replica] === address) return;
    this.peers[replica] = address;
    for (const wake of [...(this.moveListeners.get(replica) ?? [])]) wake();
  }

  async allGather(block: number, topic: string, own: ReadonlyMap<number, SampleRecord>, signal?: AbortSignal, shares?: ItemShares): Promise<SampleRecord[]> {
    checkBlockTopic(block, topic);
    signal?.throwIfAborted();
    const { replica, replicas } = this.slice;
    const range = (r: number) => ownedItems(this.o.samples, this.slice, r, shares);
    const { mine, written } = await this.settleOwn(block, topic, this.ownRecords(block, topic, own, range(replica)));
    const vectors = mine.records[0]!.length;
    const all: SampleRecord[] = new Array<SampleRecord>(itemCount(this.o.samples, shares));
    mine.records.forEach((r, i) => (all[mine.first + i] = r));
    if (replicas === 1) {
      await written;
      return all;
    }
    // Peers get the records at once; the file (for peers that ask after this replica is gone)
    // is written meanwhile. Records are a function of the replica's inputs, so a rerun after a
    // crash before the file was written publishes the same bits.
    this.o.registry.publish(this.o.jobId, block, topic, replica, mine);

    // The first peer that fails for good stops the others.
    const stop = new AbortController();
    const onAbort = () => stop.abort(signal!.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    // An abort during the awaits above fired no listener.
    if (signal?.aborted) onAbort();
    try {
      const pulls = [];
      for (let r = 0; r < replicas; r++) {
        if (r === replica) continue;
        pulls.push(this.pullPeer(block, topic, r, range(r), vectors, stop.signal).then((got) => {
          got.records.forEach((rec, i) => (all[got.first + i] = rec));
        }).catch((err: unknown) => {
          stop.abort(err);
          throw err;
        }));
      }
      pulls.push(written);
      const results = await Promise.allSettled(pulls);
      // Lets the records served to peers meanwhile leave before the caller computes again.
      await new Promise((resolve) => setImmediate(resolve));
      // The caller's abort wins over the errors it caused in the pulls.
      signal?.throwIfAborted();
      const failed = results.find((x) => x.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      return all;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  async post(block: number, topic: string, record: SampleRecord, signal?: AbortSignal): Promise<void> {
    checkBlockTopic(block, topic);
    signal?.throwIfAborted();
    const { replica } = this.slice;
    checkVectors(record, this.subject(block, topic, replica));
    const { mine, written } = await this.settleOwn(block, topic, { first: replica, records: [record] });
    this.o.registry.publish(this.o.jobId, block, topic, replica, mine);
    await written;
  }

  async fetch(block: number, topic: string, from: number, vectors: number, signal?: AbortSignal): Promise<SampleRecord> {
    checkBlockTopic(block, topic);
    if (!(Number.isInteger(from) && from >= 0 && from < this.slice.replicas) || from === this.slice.replica) {
      throw new InvalidArgumentError("from", `must be another replica of [0, ${this.slice.replicas}), got ${from} at replica ${this.slice.replica}`);
    }
    const got = await this.pullPeer(block, topic, from, { first: from, end: from + 1 }, vectors, signal ?? new AbortController().signal);
    return got.records[0]!;
  }

  /** The caller's records, checked: exactly this replica's items [first, end), the same vector count each. */
  private ownRecords(block: number, topic: string, own: ReadonlyMap<number, SampleRecord>, { first, end }: { first: number; end: number }): ReplicaRecords {
    const records: SampleRecord[] = [];
    for (let j = first; j < end; j++) {
      const r = own.get(j);
      if (!r) throw new InvalidArgumentError("own", `block ${block} topic ${topic}: no record of sample ${j}; replica ${this.slice.replica} owns samples [${first}, ${end})`);
      checkVectors(r, `${this.subject(block, topic, this.slice.replica)}, sample ${j}`);
      records.push(r);
    }
    if (own.size !== end - first) throw new InvalidArgumentError("own", `block ${block} topic ${topic}: ${own.size} records; replica ${this.slice.replica} owns the ${end - first} samples [${first}, ${end})`);
    const data = { first, records };
    try {
      expectRecords(data, first, end, `block ${block} topic ${topic}`, records[0]!.length);
    } catch (err) {
      throw new InvalidArgumentError("own", (err as Error).message);
    }
    return data;
  }

  /**
   * This replica's records: those of its file when an earlier run already wrote a valid one,
   * else `mine`, with the write of its file (`written`, under way).
   */
  private async settleOwn(block: number, topic: string, mine: ReplicaRecords): Promise<{ mine: ReplicaRecords; written: Promise<void> }> {
    const path = exchangePath(this.o.workDir, block, topic, this.slice.replica);
    if (await exists(path)) {
      try {
        const earlier = await readExchangeFile(path);
        expectRecords(earlier, mine.first, mine.first + mine.records.length, path, mine.records[0]!.length);
        return { mine: earlier, written: Promise.resolve() };
      } catch (err) {
        if (!(err instanceof ExchangeError)) throw err;
        this.o.log?.(`${path}: ${err.message}; writing it again`);
      }
    }
    const written = this.slice.replicas > 1 ? writeExchangeFile(path, mine) : Promise.resolve();
    written.catch(() => {}); // awaited by allGather; a throw before that must not leave it unhandled
    return { mine, written };
  }

  /**
   * Replica r's records, checked (its items [first, end), `vectors` vectors each): its file, or
   * PullExchange from its worker, retried until one of them works.
   */
  private async pullPeer(block: number, topic: string, r: number, items: { first: number; end: number }, vectors: number, signal: AbortSignal): Promise<ReplicaRecords> {
    const path = exchangePath(this.o.workDir, block, topic, r);
    const { first, end } = items;
    const checked = (got: ReplicaRecords, source: string) => {
      expectRecords(got, first, end, `${this.subject(block, topic, r)} (${source})`, vectors);
      return got;
    };
    const backoff = this.o.backoffMs ?? { initial: 50, max: 1000 };
    let delay = backoff.initial;
    let lastLogged = "";
    let loggedAt = 0;
    for (;;) {
      signal.throwIfAborted();
      if (await exists(path)) return checked(await readExchangeFile(path), path);
      const address = this.peers[r]!;
      let reason: string;
      try {
        const got = await this.pullOnce(block, topic, r, items, address, path, signal);
        if (typeof got !== "string") return checked(got, `from ${address}`);
        continue; // the file appeared or the peer moved: look again at once
      } catch (err) {
        signal.throwIfAborted();
        if (err instanceof AtvpError) throw err;
        const code = (err as { code?: number }).code;
        const details = (err as { details?: string }).details || (err as Error).message;
        if (code !== undefined && PERMANENT.has(code)) {
          throw new ExchangeError(this.subject(block, topic, r), `${address} refused PullExchange: ${details}`, { cause: err });
        }
        reason = details;
      }
      if (address !== this.peers[r]) {
        delay = backoff.initial;
        continue;
      }
      // A replica may wait minutes for a slow peer: say so when something changes, not every retry.
      const what = `${address}: ${reason}`;
      if (what !== lastLogged || Date.now() - loggedAt > 30_000) {
        this.o.log?.(`${this.subject(block, topic, r)}: pulling from ${address} failed (${reason}); retrying`);
        lastLogged = what;
        loggedAt = Date.now();
      }
      await this.pause(delay, r, signal);
      delay = Math.min(delay * 2, backoff.max);
    }
  }

  /**
   * One PullExchange call. Resolves with the records, or with why it stopped early for a reason
   * that calls for looking again at once (the peer moved, its file appeared).
   */
  private async pullOnce(block: number, topic: string, r: number, { first, end }: { first: number; end: number }, address: string, path: string, signal: AbortSignal): Promise<ReplicaRecords | string> {
    signal.throwIfAborted(); // an abort before the listener below is added would go unheard
    const client = createClient(WorkerDataService, address, this.o.credentials, { ...this.o.channelOptions, "grpc-node.flow_control_window": EXCHANGE_WINDOW_BYTES });
    const stream = client.pullExchange({ jobId: this.o.jobId, block, topic, replica: r });
    let why: string | undefined;
    const stop = (reason: string) => {
      why ??= reason;
      stream.cancel();
    };
    const unlisten = this.onMove(r, () => stop(`replica ${r} moved to ${this.peers[r]}`));
    const onAbort = () => stop("aborted");
    signal.addEventListener("abort", onAbort, { once: true });
    const fileCheck = setInterval(() => {
      exists(path).then((yes) => yes && stop("its file appeared"), () => {});
    }, this.o.fileCheckMs ?? 10);
    const assembler = new RecordAssembler(`${this.subject(block, topic, r)} from ${address}`, first, end);
    try {
      for await (const m of stream) assembler.push(m);
      return why ?? assembler.finish();
    } catch (err) {
      // Our own cancel() surfaces as a CANCELLED error: report why we cancelled instead.
      if (why !== undefined && !(err instanceof AtvpError)) return why;
      throw err;
    } finally {
      clearInterval(fileCheck);
      signal.removeEventListener("abort", onAbort);
      unlisten();
      client.close();
    }
  }

  /** Waits `ms`, less if replica r moves meanwhile; rejects when the signal aborts. */
  private pause(ms: number, r: number, signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        unlisten();
        signal.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        done();
        reject(signal.reason);
      };
      const timer = setTimeout(() => { done(); resolve(); }, ms);
      const unlisten = this.onMove(r, () => { done(); resolve(); });
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  private onMove(r: number, fn: () => void): () => void {
    let set = this.moveListeners.get(r);
    if (!set) this.moveListeners.set(r, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  private subject(block: number, topic: string, r: number): string {
    return `job ${this.o.jobId} block ${block} topic ${topic} replica ${r}`;
  }
}

/** Refuses a call for a block that is not a non-negative integer, or a topic no file can be named for. */
function checkBlockTopic(block: number, topic: string): void {
  if (!(Number.isInteger(block) && block >= 0)) throw new InvalidArgumentError("block", `must be a non-negative integer, got ${block}`);
  checkTopic(topic);
}
