/**
 * The input of a shard that starts after block 0: the states entering its first block, pulled
 * from the worker of the previous shard (PullStates) as that worker computes them, so this
 * shard's first block starts on sample 0 while later samples are still on their way.
 *
 * The upstream may not be running yet, may die, or may be replaced: the puller retries with
 * backoff, keeps every sample already received (asking again from the next one), switches to a
 * new address as soon as the coordinator names one (UpdateUpstream), and meanwhile watches the
 * work dir for states/input-<b>.bin, which a finished upstream leaves behind before it goes.
 */
import type * as grpc from "@grpc/grpc-js";
import { WorkerDataService } from "../../../gen/atvprune/v1/worker_data_pb.js";
import type { SampleState, StateSource } from "../../../core/src/index.js";
import { createClient } from "../../../rpc/index.js";
import { exists } from "../checkpoint/checkpoints.js";
import { CheckpointError, StateStreamError } from "../errors.js";
import { StateFileReader } from "../checkpoint/stateFile.js";
import { StateAssembler } from "./stateStream.js";

/**
 * Channel options of the data plane's client. HTTP/2's default 64 KiB flow-control window makes
 * the sender wait for a window update every 64 KiB; 8 MiB lets a few chunks be in flight
 * (measured: ~1.7x the throughput between two processes on loopback). A channel of its own
 * (not grpc-js's process-wide subchannel pool) so closing the client closes the connection,
 * instead of leaving it open for up to 10 s.
 */
export const DATA_PLANE_CHANNEL_OPTIONS: grpc.ChannelOptions = { "grpc-node.flow_control_window": 8 << 20, "grpc.use_local_subchannel_pool": 1 };

export interface UpstreamOptions {
  jobId: string;
  block: number;
  count: number;
  upstream: string;
  /** states/input-<block>.bin in the job's work dir (this replica's share of it) */
  statesFile: string;
  /** with data-parallel replicas: the replica whose share is pulled (the same replica upstream) */
  replica?: { replica: number; replicas: number };
  credentials: grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
  signal: AbortSignal;
  /** data bytes received (metrics) */
  onBytes?: (n: number) => void;
  log?: (message: string) => void;
  /** how often the work dir is checked while a stream is open */
  fileCheckMs?: number;
  backoffMs?: { initial: number; max: number };
}

type Waiter = { resolve: (s: SampleState) => void; reject: (e: unknown) => void };

export class UpstreamStates implements StateSource {
  readonly count: number;
  /** Resolves with every sample once all have arrived; rejects if pulling stops for good. */
  readonly complete: Promise<SampleState[]>;
  /** True when the states came from the work dir file (no need to write it again). */
  fromFile = false;

  private readonly states: SampleState[] = [];
  private readonly waiters = new Map<number, Waiter[]>();
  private failure: unknown;
  private address: string;
  private interrupt: (() => void) | undefined;

  constructor(private readonly o: UpstreamOptions) {
    this.count = o.count;
    this.address = o.upstream;
    this.complete = this.pull();
    this.complete.catch((err) => this.fail(err));
  }

  /** The coordinator moved the upstream shard: drop the current stream and pull from `address`. */
  setUpstream(address: string): void {
    if (address === this.address) return;
    this.address = address;
    this.interrupt?.();
  }

  get received(): number {
    return this.states.length;
  }

  get(sample: number): Promise<SampleState> {
    const s = this.states[sample];
    if (s) return Promise.resolve(s);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (sample < 0 || sample >= this.count) return Promise.reject(new RangeError(`job ${this.o.jobId} block ${this.o.block} has no sample ${sample}`));
    return new Promise((resolve, reject) => {
      let list = this.waiters.get(sample);
      if (!list) this.waiters.set(sample, (list = []));
      list.push({ resolve, reject });
    });
  }

  private accept(state: SampleState): void {
    const j = this.states.length;
    this.states.push(state);
    for (const w of this.waiters.get(j) ?? []) w.resolve(state);
    this.waiters.delete(j);
  }

  private fail(err: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    for (const list of this.waiters.values()) for (const w of list) w.reject(err);
    this.waiters.clear();
  }

  private async pull(): Promise<SampleState[]> {
    const { signal } = this.o;
    const backoff = this.o.backoffMs ?? { initial: 50, max: 1000 };
    let delay = backoff.initial;
    let lastLogged = "";
    let loggedAt = 0;
    while (this.states.length < this.count) {
      signal.throwIfAborted();
      if (await exists(this.o.statesFile)) {
        await this.readFile();
        break;
      }
      const before = this.states.length;
      const address = this.address;
      let reason: string;
      try {
        reason = await this.pullOnce(address);
      } catch (err) {
        if (err instanceof StateStreamError || err instanceof CheckpointError) throw err;
        signal.throwIfAborted();
        reason = (err as { details?: string }).details || (err as Error).message;
      }
      if (this.states.length > before) delay = backoff.initial;
      if (this.states.length >= this.count) break;
      if (address !== this.address) continue; // a new upstream: try it at once
      // A downstream may wait minutes for its upstream: say so when something changes, not every retry.
      const what = `${address}: ${reason}`;
      if (what !== lastLogged || Date.now() - loggedAt > 30_000) {
        this.o.log?.(`job ${this.o.jobId} block ${this.o.block}: pulling from ${address} stopped at sample ${this.states.length}/${this.count} (${reason}); retrying`);
        lastLogged = what;
        loggedAt = Date.now();
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, backoff.max);
    }
    return this.states;
  }

  /** One PullStates stream from the next missing sample; resolves with why it stopped early. */
  private async pullOnce(address: string): Promise<string> {
    const client = createClient(WorkerDataService, address, this.o.credentials, this.o.channelOptions);
    const from = this.states.length;
    const stream = client.pullStates({ jobId: this.o.jobId, block: this.o.block, fromSample: from, replica: this.o.replica?.replica ?? 0, replicas: this.o.replica?.replicas ?? 1 });
    let why = "the stream ended early";
    const stop = (reason: string) => {
      why = reason;
      stream.cancel();
    };
    this.interrupt = () => stop(`upstream moved to ${this.address}`);
    const onAbort = () => stop("the shard was cancelled");
    this.o.signal.addEventListener("abort", onAbort);
    const fileCheck = setInterval(() => {
      exists(this.o.statesFile).then((yes) => yes && stop("the states file appeared"), () => {});
    }, this.o.fileCheckMs ?? 500);
    const assembler = new StateAssembler(`job ${this.o.jobId} block ${this.o.block} from ${address}`, from);
    try {
      for await (const chunk of stream) {
        this.o.onBytes?.(chunk.data.byteLength);
        const state = assembler.push(chunk);
        if (state) {
          this.accept(state);
          if (this.states.length >= this.count) break;
        }
      }
      return why;
    } catch (err) {
      // Our own cancel() surfaces as a CANCELLED error: report why we cancelled instead.
      if (why !== "the stream ended early" && !(err instanceof StateStreamError)) return why;
      throw err;
    } finally {
      clearInterval(fileCheck);
      this.o.signal.removeEventListener("abort", onAbort);
      this.interrupt = undefined;
      client.close();
    }
  }

  private async readFile(): Promise<void> {
    const r = await StateFileReader.open(this.o.statesFile);
    try {
      if (r.count !== this.count) throw new CheckpointError(this.o.statesFile, `holds ${r.count} samples; the job has ${this.count}`);
      for await (const [, s] of r.samples(this.states.length)) this.accept(s);
      this.fromFile = true;
    } finally {
      await r.close();
    }
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    const t = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
