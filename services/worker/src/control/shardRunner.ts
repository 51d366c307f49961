/**
 * Runs one shard (a contiguous range of blocks of one job) on this worker: replays the blocks
 * already done, finds the input states of the first block left (checkpoint file, the prologue,
 * or the upstream worker), then runs each block through the BlockEngine, writing its pruned
 * weights into the shared output file and its checkpoints into the work dir, and serving the
 * last block's outputs to the downstream worker as each sample is computed.
 */
import { open, stat, type FileHandle } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import { join, resolve } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ShardAssignment, ShardProgressSchema } from "../../../gen/atvprune/v1/worker_pb.js";
import {
  InvalidArgumentError, DATA_FILE, PARTIAL_SUFFIX, arraySource, offsetSource, BlockEngine,
  type SampleState, type StateSource, needsCalibration, InferenceHost, MaskPool, SolvePool, type ReplicaSlice, clampThreads,
} from "../../../core/src/index.js";
import { RpcError, fromPlanMessage, toBlockFinished } from "../../../rpc/index.js";
import { exists, WorkDir, type BlockRecord } from "../checkpoint/checkpoints.js";
import { CheckpointError, inBlock, inShard } from "../errors.js";
import type { Outbox, OutboxRegistry } from "../dataplane/outbox.js";
import type { ExchangeRegistry } from "../dataplane/exchangeRegistry.js";
import { openShardJob, type ShardJob } from "./shardJob.js";
import { DEFAULT_HEARTBEAT_MS, RunLiveness } from "./runLiveness.js";
import { readStateFile, StateFileWriter, writeStateFile } from "../checkpoint/stateFile.js";
import { UpstreamStates } from "../dataplane/upstreamStates.js";
import { writeWeights } from "./weightWrites.js";
import { CommitQueue } from "./commitQueue.js";
import { GrpcReplicaExchange } from "../dataplane/replicaExchange.js";
import type { WorkerMetrics } from "../workerMetrics.js";

export type Progress = MessageInitShape<typeof ShardProgressSchema>;

export interface ShardRunDeps {
  workerId: string;
  threads: number;
  device: "cpu" | "cuda" | "auto";
  outboxes: OutboxRegistry;
  /** where this worker's replicas publish their exchange records (GrpcReplicaExchange) */
  exchanges: ExchangeRegistry;
  metrics: WorkerMetrics;
  /** how this worker reaches its upstream (and the other replicas of its stage) */
  credentials: grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
  log: (message: string) => void;
}

export class ShardRun {
  readonly jobId: string;
  readonly shard: number;
  readonly firstBlock: number;
  readonly endBlock: number;
  readonly workDir: string;
  /** which replica of its stage this shard is (its share of the samples) */
  readonly slice: ReplicaSlice;
  private exchange: GrpcReplicaExchange | undefined;
  /** the other replicas of this stage, by replica (UpdatePeer moves them) */
  private readonly peers: string[];
  private readonly abort = new AbortController();
  private upstream: string;
  private puller: UpstreamStates | undefined;
  private liveness: RunLiveness | undefined;

  constructor(private readonly a: ShardAssignment, private readonly deps: ShardRunDeps) {
    this.jobId = a.jobId;
    this.shard = a.shard;
    this.firstBlock = a.firstBlock;
    this.endBlock = a.endBlock;
    this.workDir = a.workDir;
    this.upstream = a.upstream;
    this.slice = { replica: a.replica, replicas: Math.max(1, a.replicas) };
    this.peers = [...a.peers];
  }

  /** Replica 0 writes the stage's block records (once every replica's share of the weights is durable) and reports its blocks. */
  private get writes(): boolean {
    return this.slice.replica === 0;
  }

  /** A replica of this stage moved: the exchange pulls its records from `address` from now on. */
  setPeer(replica: number, address: string): void {
    this.peers[replica] = address;
    this.exchange?.setPeer(replica, address);
  }


  get subject(): string {
    const replica = this.slice.replicas > 1 ? `, replica ${this.slice.replica} of ${this.slice.replicas}` : "";
    return `job ${this.jobId} shard ${this.shard} (blocks ${this.firstBlock}-${this.endBlock - 1}${replica})`;
  }

  /** Stops the run at the next sample; run() then rejects with `reason`. */
  cancel(reason: Error = new RpcError(status.CANCELLED, `${this.subject} was cancelled`)): void {
    if (!this.abort.signal.aborted) this.abort.abort(reason);
  }

  get cancelled(): boolean {
    return this.abort.signal.aborted;
  }

  setUpstream(address: string): void {
    this.upstream = address;
    this.puller?.setUpstream(address);
  }

  /**
   * Throws once the run is cancelled or its process was frozen past the stall fence
   * (runLiveness.ts): called before each write to the output or the work folder.
   */
  private guard(): void {
    this.abort.signal.throwIfAborted();
    this.liveness?.guard();
  }

  async run(emit: (p: Progress) => Promise<void>): Promise<void> {
    const signal = this.abort.signal;
    if (!this.jobId || !this.workDir) throw new InvalidArgumentError(this.subject, "job_id and work_dir are required");
    const liveness = new RunLiveness({
      heartbeatMs: this.a.heartbeatMs || DEFAULT_HEARTBEAT_MS, stallTimeoutMs: this.a.stallTimeoutMs, subject: this.subject,
      // A heartbeat that cannot be sent is no failure of the run: the stream's own end says why.
      beat: () => void emit({ progress: { case: "heartbeat", value: { shard: this.shard } } }).catch(() => {}),
      frozen: (reason) => {
        this.deps.log(reason.message);
        this.cancel(reason);
      },
    });
    this.liveness = liveness;
    liveness.start();
    let job: ShardJob;
    try {
      job = await openShardJob(fromPlanMessage(this.a.plan), this.deps);
    } catch (err) {
      liveness.stop();
      throw inShard(err, this.subject);
    }
    let host: InferenceHost | undefined;
    let maskPool: MaskPool | undefined;
    let solvePool: SolvePool | undefined;
    let outbox: Outbox | undefined;
    let weights: FileHandle | undefined;
    let commits: CommitQueue | undefined;
    try {
      const numBlocks = job.analysis.partition.numBlocks;
      if (!(this.firstBlock < this.endBlock && this.endBlock <= numBlocks)) {
        throw new InvalidArgumentError(this.subject, `blocks [${this.firstBlock}, ${this.endBlock}) are not a range of the model's ${numBlocks} blocks`);
      }
      const wd = new WorkDir(this.workDir, this.slice);
      this.guard();
      await wd.prepare();
      let b = this.firstBlock;
      for (; b < this.endBlock && (await wd.isDoneHere(b)); b++) if (this.writes) await emit(finishedEvent(await wd.readBlock(b), this.deps.workerId));
      if (b < this.endBlock) {
        signal.throwIfAborted();
        const needsStates = needsCalibration(job.plan.method);
        if (this.slice.replicas > 1) {
          this.exchange = new GrpcReplicaExchange({
            jobId: this.jobId, samples: job.samples.length, slice: this.slice, peers: this.peers, workDir: this.workDir,
            registry: this.deps.exchanges, credentials: this.deps.credentials, channelOptions: this.deps.channelOptions, log: this.deps.log,
          });
        }
        host = InferenceHost.start({ threads: this.deps.threads, device: this.deps.device, warn: this.deps.log });
        // The job's count, up to this worker's cores (more only cost memory; any count, same bits).
        const maskThreads = clampThreads(job.spec.maskThreads, this.deps.log, "mask_threads");
        maskPool = MaskPool.start(maskThreads);
        // Started only if the method solves (SparseGPT); off this thread, which keeps the worker's
        // event loop (heartbeats, streams) free while it does.
        solvePool = maskThreads > 1 ? new SolvePool(maskThreads) : undefined;
        const engine = new BlockEngine({
          ...job.analysis, data: job.data, spec: job.spec, host, samples: job.samples, feeds: job.feeds, targets: job.targets, maskPool,
          ...(solvePool ? { solver: solvePool } : {}),
          ...(this.exchange ? { exchange: this.exchange } : {}),
        });
        if (needsStates) outbox = this.deps.outboxes.open(this.jobId, this.endBlock, engine.end - engine.first, this.slice.replica);
        const input = needsStates ? await this.inputStates(b, job, engine, wd) : { source: arraySource([]) };
        weights = await openOutput(job);
        commits = new CommitQueue((reason) => this.cancel(reason as Error));
        let source = input.source;
        // At most one block's commit runs behind the compute: two blocks' weights in memory, as
        // the planner counts them.
        const behind: Promise<void>[] = [];
        for (; b < this.endBlock; b++) {
          if (behind.length > 1) await behind.shift();
          signal.throwIfAborted();
          const block = b;
          const label = job.analysis.plan.blocks[b]!.label;
          if (this.writes) commits.push(() => emit({ progress: { case: "blockStarted", value: { block, label, worker: this.deps.workerId } } }));
          let commit: () => Promise<BlockRecord>;
          try {
            ({ commit, source } = await this.runBlock(b, source, { job, engine, wd, weights, outbox, edge: b === this.firstBlock ? input.edge : undefined }));
          } catch (err) {
            throw signal.aborted ? signal.reason : inBlock(err, this.jobId, b, label);
          }
          behind.push(commits.push(async () => {
            let record: BlockRecord;
            try {
              record = await commit();
            } catch (err) {
              throw signal.aborted ? signal.reason : inBlock(err, this.jobId, block, label);
            }
            this.count(record, job, engine);
            if (this.writes) await emit(finishedEvent(record, this.deps.workerId));
          }));
        }
        await commits.drain();
        // states/input-<end>.bin is complete: late pullers read it from now on.
        if (outbox) this.deps.outboxes.remove(outbox);
      }
      await emit({ progress: { case: "done", value: { shard: this.shard } } });
    } catch (err) {
      const reason = signal.aborted ? signal.reason : err;
      // A downstream pulling from us sees UNAVAILABLE and retries (elsewhere, once the shard is rerun).
      outbox?.fail(new RpcError(status.UNAVAILABLE, `${this.subject} stopped: ${(reason as Error)?.message ?? String(reason)}`));
      if (outbox) this.deps.outboxes.remove(outbox);
      throw reason;
    } finally {
      liveness.stop();
      if (!signal.aborted) this.abort.abort(new Error(`${this.subject} ended`));
      // A commit still writing stops at its next guard; the files close after it.
      await commits?.settled();
      await weights?.close().catch(() => {});
      await host?.close().catch(() => {});
      await maskPool?.close().catch(() => {});
      await solvePool?.close().catch(() => {});
      await job.data.close().catch(() => {});
      // Peers that still need this replica's records read them from the work dir.
      if (this.exchange) this.deps.exchanges.forgetJob(this.jobId);
    }
  }

  /** The states entering block b (the first block not done), and the write of their checkpoint. */
  private async inputStates(b: number, job: ShardJob, engine: BlockEngine, wd: WorkDir): Promise<{ source: StateSource; edge?: Promise<void> }> {
    const path = wd.statesPath(b);
    const first = engine.first;
    const n = engine.end - first;
    if (await exists(path)) return { source: arraySource(await readStateFile(path, n), first) };
    if (b === 0) {
      const states = await engine.initialStates();
      this.guard();
      await writeStateFile(path, states);
      return { source: arraySource(states, first) };
    }
    if (b !== this.firstBlock) {
      throw new CheckpointError(path, `block ${b - 1} is done but the states entering block ${b} are missing; delete ${wd.blockPath(b - 1)} to recompute it`);
    }
    if (!this.upstream) throw new InvalidArgumentError(this.subject, `needs the states entering block ${b} but has no upstream worker and no ${path}`);
    const puller = new UpstreamStates({
      jobId: this.jobId, block: b, count: n, upstream: this.upstream, statesFile: path, ...(this.slice.replicas > 1 ? { replica: this.slice } : {}),
      credentials: this.deps.credentials, channelOptions: this.deps.channelOptions, signal: this.abort.signal,
      onBytes: (bytes) => this.deps.metrics.activationBytes.inc({ direction: "received" }, bytes),
      log: this.deps.log,
    });
    this.puller = puller;
    // The stage-edge checkpoint: once every sample arrived, a rerun of this shard needs no upstream.
    const edge = puller.complete.then((states) => {
      if (puller.fromFile) return undefined;
      this.guard();
      return writeStateFile(path, states);
    });
    edge.catch(() => {});
    return { source: offsetSource(puller, first), edge };
  }

  /**
   * Computes block b (its output states appended to their checkpoint as they come) and returns
   * them with the block's commit, which the caller runs behind the next block's compute: the
   * weights (fsynced), the states file, then, on replica 0, blocks/<b>.json.
   */
  private async runBlock(
    b: number, source: StateSource,
    ctx: { job: ShardJob; engine: BlockEngine; wd: WorkDir; weights: FileHandle; outbox: Outbox | undefined; edge: Promise<void> | undefined },
  ): Promise<{ commit: () => Promise<BlockRecord>; source: StateSource }> {
    const { job, engine, wd, weights, outbox } = ctx;
    const needsStates = needsCalibration(job.plan.method);
    this.guard();
    const first = engine.first;
    const states = needsStates ? await StateFileWriter.create(wd.statesPath(b + 1), engine.end - first) : undefined;
    // Samples are appended to the checkpoint while later ones are computed; errors wait for the commit.
    let appended = Promise.resolve();
    let appendError: unknown;
    const serve = b === this.endBlock - 1 ? outbox : undefined;
    const onNext = (j: number, state: SampleState) => {
      serve?.put(j - first, state);
      appended = appended.then(() => { this.guard(); return states!.append(state); }).catch((err: unknown) => { appendError ??= err; });
    };
    let result: Awaited<ReturnType<BlockEngine["runBlock"]>>;
    try {
      result = await engine.runBlock(b, source, { onNext: needsStates ? onNext : undefined, signal: this.abort.signal });
    } catch (err) {
      await appended;
      await states?.abort();
      throw err;
    }
    const commit = async (): Promise<BlockRecord> => {
      try {
        // The replicas of a stage write a share of the weights each; a replica's share is durable
        // once its states entering b + 1 are (they are committed after it).
        const share = needsStates && this.slice.replicas > 1 ? this.slice : undefined;
        if (this.writes || share) await writeWeights(weights, result.weights, job.regions, () => this.guard(), share);
        engine.recycle(result.weights);
        await appended;
        if (appendError) throw appendError;
        this.guard();
        await states?.commit();
        await ctx.edge;
        const record: BlockRecord = { report: result.report, layers: result.layers };
        this.guard();
        if (this.writes && share) await this.awaitShares(wd, b);
        if (this.writes) await wd.writeBlock(b, record, () => this.guard());
        return record;
      } catch (err) {
        await appended;
        await states?.abort();
        throw err;
      }
    };
    return { commit, source: arraySource(result.next, first) };
  }

  /**
   * Replica 0 marks block b done only once every replica's share of its weights is durable: when
   * each replica's states entering b + 1 exist (a replica commits them after its share). A file,
   * not a message: a replica that committed and then died, and skips the block when rerun, still
   * counts.
   */
  private async awaitShares(wd: WorkDir, b: number): Promise<void> {
    for (let r = 1; r < this.slice.replicas; r++) {
      const path = wd.statesPathOf(b + 1, r);
      for (let wait = 1; !(await exists(path)); wait = Math.min(50, wait * 2)) {
        this.guard();
        await sleep(wait, undefined, { signal: this.abort.signal }).catch(() => {});
      }
    }
    this.guard();
  }

  /** Replica 0 counts the block and its pruned weights; every replica counts the tokens it passed. */
  private count(record: BlockRecord, job: ShardJob, engine: BlockEngine): void {
    const m = this.deps.metrics;
    if (this.writes) {
      m.blocksPruned.inc();
      m.paramsPruned.inc(record.layers.reduce((a, l) => a + l.pruned, 0));
    }
    if (needsCalibration(job.plan.method)) m.calibrationTokenPasses.inc(job.samples.slice(engine.first, engine.end).reduce((a, s) => a + s.tokens, 0));
    m.blockDuration.observe(record.report.seconds);
  }
}

function finishedEvent(record: BlockRecord, worker: string): Progress {
  return { progress: { case: "blockFinished", value: toBlockFinished(record, worker) } };
}

/** <out>/model.onnx.data.partial, which the coordinator created (sized) before assigning shards. */
async function openOutput(job: ShardJob): Promise<FileHandle> {
  const path = join(resolve(job.plan.out), DATA_FILE + PARTIAL_SUFFIX);
  const end = job.plan.dataBytes;
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    throw new CheckpointError(path, `cannot open the job's output (${(err as Error).message}); the coordinator creates it before assigning shards`, { cause: err });
  }
  if (size < end) throw new CheckpointError(path, `is ${size} bytes but the output layout needs ${end}; it belongs to another job or model`);
  return open(path, "r+");
}

