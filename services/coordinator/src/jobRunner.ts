/**
 * Drives one job from RUNNING to a terminal state: plans shards over the ready workers, runs
 * them (each on one worker; a shard whose worker dies is rerun elsewhere and resumes from the
 * job's checkpoints), records progress in the job store and events, and has a worker finalize
 * the output, then writes report.json from the block reports of the progress stream. The job's
 * plan is resolved here once and sent to the workers; the coordinator reads the model's graph
 * and the tensors' sizes, never a weight. Every path ends SUCCEEDED, FAILED (with the reason)
 * or CANCELLED.
 */
import { existsSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  JobEventSchema, JobState, ShardStatusSchema,
  type Job, type JobEvent, type JobSpec,
} from "../../gen/atvprune/v1/job_pb.js";
import type { ShardProgress } from "../../gen/atvprune/v1/worker_pb.js";
import type { JobPlan as JobPlanMessage } from "../../gen/atvprune/v1/plan_pb.js";
import {
  InvalidArgumentError, PARTIAL_SUFFIX, REPORT_FILE, prepareOutputDir, releaseOutput,
  type PreparedOutput, DATA_FILE, createPartialData, partialDataPath, removePartialData, planJob,
  selectPrunable, TensorData, fsErrorToTyped, analyzeModel, buildReport, jobInputs, loadSamples,
  resolveSpec, needsCalibration, methodDefinition, type BlockReport, type LayerReport, type JobPlan, jobProfile,
  isModelFolder, openFolderJob, assembleFolder, DECODER_STAGE,
} from "../../core/src/index.js";
import { fromBlockFinished, type BlockRecord, toPlanMessage, toPruneSpec } from "../../rpc/index.js";
import type { CoordinatorMetrics } from "./coordinatorMetrics.js";
import type { EventPort, JobStatePort } from "./ports.js";
import { openBlockStarts } from "./openBlocks.js";
import { planGrid, type PlannedShard } from "./shardPlanner.js";
import { DEFAULT_STALL_TIMEOUT_S, heartbeatMs, StallWatchdog } from "./stallWatchdog.js";
import type { WorkerClient, WorkerPool } from "./workerPool.js";

export interface RunnerDeps {
  store: JobStatePort;
  events: EventPort;
  pool: WorkerPool;
  metrics: CoordinatorMetrics;
  workRoot: string;
  log: (message: string) => void;
  /** how long a shard may wait for a worker before the job fails */
  reassignTimeoutMs?: number;
  /** attempts per shard before the job fails */
  maxAttempts?: number;
  /** before planning: make `requested` workers (0: any) available, e.g. scale a StatefulSet; must not throw */
  acquireWorkers?: (requested: number, signal: AbortSignal) => Promise<void>;
  /** a worker silent this long on a shard's stream is declared lost (default 120 s) */
  stallTimeoutMs?: number;
  /** keep every job's work folder, whatever its end (otherwise only FAILED jobs keep theirs) */
  keepWork?: boolean;
}

/** Why a shard attempt ended without finishing (the `cause` of shard_failed / shard_reassigned). */
type FailureCause = "lost" | "stalled" | "crashed";

class Cancelled extends Error {}

/** Finalizing copies every untouched weight: generous, but not forever. */
const FINALIZE_DEADLINE_MS = 60 * 60 * 1000;

// Statuses that a rerun cannot fix: the input or the spec is wrong.
const DETERMINISTIC = new Set([status.INVALID_ARGUMENT, status.FAILED_PRECONDITION, status.ALREADY_EXISTS, status.NOT_FOUND, status.PERMISSION_DENIED, status.OUT_OF_RANGE]);

export class JobRunner {
  private cancelReason: string | undefined;
  private readonly running = new Map<number, string>();
  private readonly done = new Set<number>();
  private readonly abort = new AbortController();
  private shards: PlannedShard[] = [];
  /** replicas per stage of the planned grid */
  private replicas = 1;
  private tokensPerBlock = 0;
  private plan: JobPlanMessage | undefined;
  /** block reports as the workers stream them (a rerun shard reports its done blocks again) */
  private readonly records = new Map<number, BlockRecord>();
  /** block_started events not yet closed by block_finished or block_aborted */
  private readonly openBlocks = new Map<number, { label: string; worker: string; address: string }>();
  /** CancelShard answers: each comes once that run has stopped writing */
  private cancelAcks: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: RunnerDeps, readonly jobId: string, private readonly spec: JobSpec, private readonly resume: boolean) {}

  private detached = false;

  /**
   * Stops driving the job without ending it (the coordinator is shutting down): the job stays
   * RUNNING in the store and the next coordinator resumes it from the checkpoints.
   */
  detach(): void {
    this.detached = true;
    this.abort.abort();
  }

  cancel(reason: string): void {
    if (this.cancelReason !== undefined) return;
    this.cancelReason = reason;
    this.abort.abort();
    this.cancelAcks = Promise.allSettled([...this.running].map(([shard, address]) =>
      this.deps.pool.client(address).cancelShard({ jobId: this.jobId, shard }, { deadlineMs: 15_000 })));
  }

  private emit(event: Omit<Parameters<typeof create<typeof JobEventSchema>>[1], "jobId" | "timeUnixMs">): void {
    const e: JobEvent = create(JobEventSchema, { ...(event as object), jobId: this.jobId, timeUnixMs: BigInt(Date.now()) });
    const report = (err: unknown) => this.deps.log(`job ${this.jobId}: event not published: ${String(err)}`);
    try {
      Promise.resolve(this.deps.events.publish(e)).catch(report);
    } catch (err) {
      report(err);
    }
  }

  private async setState(state: JobState, reason = ""): Promise<void> {
    await this.deps.store.update(this.jobId, (job) => {
      job.state = state;
      job.reason = reason;
      job.updatedUnixMs = BigInt(Date.now());
    });
    this.emit({ event: { case: "stateChanged", value: { state, reason } } });
  }

  /** Runs the job to a terminal state; never throws. */
  async run(): Promise<void> {
    const started = performance.now();
    const workDir = join(this.deps.workRoot, this.jobId);
    let data: TensorData | undefined;
    let prepared: PreparedOutput | undefined;
    let preparedFolder: PreparedOutput | undefined;
    /** set once the partial output is this job's: a failure removes it */
    let partialOut: string | undefined;
    try {
      const pruneSpec = toPruneSpec(this.spec);
      // A model folder: its decoder is pruned into DECODER_STAGE inside the output folder, which
      // then gets the folder's other files and the pruned decoder under its own names.
      const folderJob = isModelFolder(this.spec.model)
        ? openFolderJob(this.spec.model, { layout: this.spec.modelLayout || undefined, dtype: this.spec.modelDtype || undefined })
        : undefined;
      if (folderJob) {
        if (!this.resume) preparedFolder = await prepareOutputDir(this.spec.out, pruneSpec.force ?? false, { inputs: [folderJob.decoderPath] });
        pruneSpec.model = folderJob.decoderPath;
        pruneSpec.out = join(this.spec.out, DECODER_STAGE);
      }
      const resolved = resolveSpec(pruneSpec, 1);
      const analysis = analyzeModel(resolved.model);
      // Metadata only (sizes, external-data files and ranges): no weight is read here.
      data = new TensorData(analysis.loaded);
      // Checked and counted here, but the embeddings stay on disk: only workers need them.
      const samples = needsCalibration(resolved.method) ? loadSamples(resolved, analysis, true) : [];
      this.tokensPerBlock = samples.reduce((a, s) => a + s.tokens, 0);
      const selection = selectPrunable(resolved, analysis);
      // A resumed job keeps the output its workers wrote: the partial data, or the data a worker
      // already finalized (this job's predecessor coordinator may have stopped while a worker
      // finalized it). Clearing it would lose pruned weights that done blocks do not rewrite.
      const resumed = this.resume && (existsSync(partialDataPath(resolved.out)) || existsSync(join(resolved.out, DATA_FILE)));
      if (!resumed) prepared = await prepareOutputDir(resolved.out, resolved.force || this.resume, { inputs: jobInputs(resolved, data, samples) });
      let plan = planJob(resolved, analysis, data, selection);
      // The profile phase (OWL) before any shard prunes: a worker's dense pass gives each block's
      // facts, reduced here into the per-linear targets the shards then run.
      if (plan.phases.includes("profile")) {
        const facts = await this.profileFacts(plan);
        const targets = jobProfile(resolved).targets({ sparsity: resolved.sparsity, linears: selection, facts });
        plan = { ...plan, phases: ["prune"], linears: plan.linears.map((l) => ({ ...l, target: targets.get(l.weight)! })) };
      }
      this.plan = toPlanMessage(plan);
      if (!resumed) await createPartialData(resolved.out, plan.dataBytes);
      partialOut = resolved.out;
      const numBlocks = analysis.partition.numBlocks;
      await this.deps.store.update(this.jobId, (job) => {
        job.state = JobState.RUNNING;
        job.blocksTotal = numBlocks;
        job.updatedUnixMs = BigInt(Date.now());
      });
      this.emit({ event: { case: "stateChanged", value: { state: JobState.RUNNING } } });

      await mkdir(workDir, { recursive: true });
      if (this.resume) await this.closeStartsOfPredecessor();
      const definition = methodDefinition(resolved.method);
      const longest = samples.reduce((a, s) => Math.max(a, s.tokens), 0);
      const costs = analysis.partition.blockLinears.map((linears) => ({
        bytes: linears.reduce((a, l) => a + data!.byteLength(analysis.index.initializers.get(l.weight)!), 0),
        flops: linears.reduce((a, l) => a + l.inDim * l.outDim, 0),
        // Workers use up to this many threads (fewer where they have fewer cores).
        workingBytes: definition.workingBytes?.(linears, resolved.maskThreads) ?? 0,
        replicaBytes: samples.length * (definition.recordBytes?.(linears, longest) ?? 0),
        chainSumBytes: definition.sumBytes?.(linears) ?? 0,
      }));
      await this.deps.acquireWorkers?.(this.spec.workers, this.abort.signal);
      this.throwIfCancelled();
      const ready = await this.deps.pool.waitForReady(1, this.deps.reassignTimeoutMs ?? 60_000, this.abort.signal);
      this.throwIfCancelled();
      // A resumed job keeps its replicas: each replica's checkpoints hold its share of the samples.
      const before = this.resume ? await this.deps.store.get(this.jobId) : undefined;
      const grid = planGrid(costs, ready.map((w) => ({ address: w.address, memoryBytes: Number(w.memoryBytes) })), {
        maxWorkers: this.spec.workers, replicas: before?.replicas || this.spec.replicas, samples: samples.length,
        replicable: definition.replicable === true, sequential: resolved.propagation === "sequential", method: resolved.method,
      });
      this.shards = grid.shards;
      this.replicas = grid.replicas;
      await this.deps.store.update(this.jobId, (job) => {
        job.stages = grid.stages;
        job.replicas = grid.replicas;
        job.shards = this.shards.map((s) => create(ShardStatusSchema, { index: s.index, firstBlock: s.firstBlock, endBlock: s.endBlock, worker: s.worker, stage: s.stage, replica: s.replica }));
      });
      this.emit({ event: { case: "gridPlanned", value: { stages: grid.stages, replicas: grid.replicas, samples: samples.length } } });
      this.deps.log(`job ${this.jobId}: ${numBlocks} blocks in ${grid.stages} stages x ${grid.replicas} replicas`);
      const results = await Promise.allSettled(this.shards.map((s) => this.runShard(s, workDir)));
      this.throwIfCancelled();
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;

      const blocks: BlockReport[] = [];
      const layers: LayerReport[] = [];
      for (let b = 0; b < numBlocks; b++) {
        const record = this.records.get(b);
        if (!record) throw new Error(`block ${b} was never reported finished, though every shard ended`);
        blocks.push(record.report);
        layers.push(...record.layers);
      }
      await this.finalizeOutput();
      partialOut = undefined; // the output is complete: nothing below may remove it
      const report = buildReport(resolved, pruneSpec, analysis, samples, blocks, layers, (performance.now() - started) / 1000);
      let written: object = { ...report, jobId: this.jobId, workers: this.shards.length, grid: { stages: this.shards.length / this.replicas, replicas: this.replicas } };
      if (folderJob) {
        await assembleFolder(folderJob, resolved.out, this.spec.out);
        await rm(resolved.out, { recursive: true, force: true });
        written = { ...written, spec: { ...report.spec, model: this.spec.model, out: this.spec.out, decoder: folderJob.folder.decoder, layout: folderJob.folder.layout } };
      }
      const reportPath = join(this.spec.out, REPORT_FILE);
      await writeFile(reportPath + PARTIAL_SUFFIX, JSON.stringify(written, null, 2) + "\n");
      await rename(reportPath + PARTIAL_SUFFIX, reportPath);
      this.deps.metrics.calibrationTokens.inc(report.totals.tokens);
      await this.removeWork(workDir);
      await this.setState(JobState.SUCCEEDED);
    } catch (err) {
      if (this.detached) {
        this.deps.log(`job ${this.jobId}: left running for the next coordinator`);
        return;
      }
      if (partialOut !== undefined) await removePartialData(partialOut).catch(() => {});
      const typed = fsErrorToTyped(err, this.spec.out); // ENOSPC, ENOTDIR, ... name the file
      const reason = typed instanceof Error ? typed.message : String(typed);
      if (this.cancelReason !== undefined) {
        this.closeOpenBlocks(`job cancelled: ${this.cancelReason}`);
        // The workers' runs must have stopped before their folders go (CancelShard waits for that).
        await this.cancelAcks;
        await releaseOutput(prepared);
        await releaseOutput(preparedFolder);
        await this.removeWork(workDir);
        await this.finalState(JobState.CANCELLED, this.cancelReason);
      } else {
        await releaseOutput(prepared);
        await releaseOutput(preparedFolder);
        this.deps.log(`job ${this.jobId} failed: ${reason}`);
        this.closeOpenBlocks(`job failed: ${reason}`);
        await this.finalState(JobState.FAILED, reason);
      }
    } finally {
      await data?.close().catch(() => {});
    }
  }

  /** A SUCCEEDED or CANCELLED job's checkpoints are of no more use (a FAILED one's are kept for resume). */
  private async removeWork(workDir: string): Promise<void> {
    if (this.spec.keepWork || this.deps.keepWork) return;
    try {
      await rm(workDir, { recursive: true, force: true, maxRetries: 3 });
    } catch (err) {
      this.deps.log(`job ${this.jobId}: could not remove its work folder ${workDir}: ${(err as Error).message}`);
    }
  }

  /**
   * A resumed job's blocks that the previous coordinator saw start but not end: those runs died
   * with it (a worker stops a shard whose stream breaks), so their block_started are closed.
   */
  private async closeStartsOfPredecessor(): Promise<void> {
    if (!this.deps.events.history) return;
    for (let attempt = 1; ; attempt++) {
      try {
        for (const open of openBlockStarts(await this.deps.events.history(this.jobId))) {
          this.emit({ event: { case: "blockAborted", value: { ...open, reason: "the coordinator that started it stopped; the job resumed from its checkpoints" } } });
        }
        return;
      } catch (err) {
        // NATS may be restarting too: a few tries, then the job goes on without (events are no reason to fail it).
        if (attempt >= 3) {
          this.deps.log(`job ${this.jobId}: could not read its event history to close its open blocks: ${(err as Error).message}`);
          return;
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  /** Ends the open block_started events (of the blocks in [first, end) on one worker address, or all). */
  private closeOpenBlocks(reason: string, only?: { address: string; first: number; end: number }): void {
    for (const [block, open] of [...this.openBlocks]) {
      if (only && (open.address !== only.address || block < only.first || block >= only.end)) continue;
      this.openBlocks.delete(block);
      this.emit({ event: { case: "blockAborted", value: { block, label: open.label, worker: open.worker, reason } } });
    }
  }

  private async finalState(state: JobState, reason: string): Promise<void> {
    try {
      await this.setState(state, reason);
    } catch (err) {
      this.deps.log(`job ${this.jobId}: could not record ${JobState[state]}: ${String(err)}`);
    }
  }

  private throwIfCancelled(): void {
    if (this.cancelReason !== undefined) throw new Cancelled(this.cancelReason);
    if (this.detached) throw new Cancelled("coordinator shutting down");
  }

  /** Runs one shard until it is done, moving it to another worker when its worker goes away. */
  private async runShard(shard: PlannedShard, workDir: string): Promise<void> {
    const maxAttempts = this.deps.maxAttempts ?? 10;
    // Whole milliseconds: it travels as a uint32.
    const stallTimeoutMs = Math.max(1, Math.round(this.deps.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_S * 1000));
    let address = shard.worker;
    let lastError = "";
    for (let attempt = 1; ; attempt++) {
      this.throwIfCancelled();
      if (attempt > maxAttempts) throw new Error(`shard ${shard.index} (blocks ${shard.firstBlock}-${shard.endBlock - 1}) failed ${maxAttempts} times; last error: ${lastError}`);
      this.running.set(shard.index, address);
      await this.deps.store.update(this.jobId, (job) => {
        const s = job.shards.find((x) => x.index === shard.index);
        if (s) { s.worker = address; s.attempts = attempt; }
      });
      this.emit({ event: { case: "shardAssigned", value: { shard: shard.index, firstBlock: shard.firstBlock, endBlock: shard.endBlock, worker: address, attempt, stage: shard.stage, replica: shard.replica } } });
      // The same replica of the next stage pulls its input from this one, and the other replicas
      // of this stage exchange records with it: tell them where this shard runs now.
      const R = this.replicas;
      const next = this.running.get(shard.index + R);
      if (attempt > 1 && next) {
        void this.deps.pool.client(next).updateUpstream({ jobId: this.jobId, shard: shard.index + R, upstream: address }, { deadlineMs: 5000 }).catch(() => {});
      }
      for (let r = 0; attempt > 1 && r < R; r++) {
        const peerShard = shard.stage * R + r;
        const at = this.running.get(peerShard);
        if (r === shard.replica || !at) continue;
        void this.deps.pool.client(at).updatePeer({ jobId: this.jobId, shard: peerShard, replica: shard.replica, address }, { deadlineMs: 5000 }).catch(() => {});
      }
      // Set when we end the stream ourselves because the worker is gone.
      let gone: { cause: FailureCause; reason: string } | undefined;
      // Progress is recorded in order but off the reading loop: a slow store must not look like a silent worker.
      let recorded: Promise<void> = Promise.resolve();
      try {
        const stream = this.deps.pool.client(address).runShard({
          jobId: this.jobId, plan: this.plan, shard: shard.index, firstBlock: shard.firstBlock, endBlock: shard.endBlock,
          upstream: this.running.get(shard.index - R) ?? (shard.stage > 0 ? this.shards[shard.index - R]!.worker : ""),
          workDir, attempt, heartbeatMs: heartbeatMs(stallTimeoutMs), stallTimeoutMs,
          stage: shard.stage, replica: shard.replica, replicas: R, peers: this.stagePeers(shard),
        });
        const onAbort = () => stream.cancel();
        this.abort.signal.addEventListener("abort", onAbort);
        // The worker's address left the pool (its pod is deleted or not ready): treat it as dead
        // now; the cancelled stream lands in the rerun path below.
        const offRemoved = this.deps.pool.onRemoved((removed) => {
          if (removed !== address) return;
          gone ??= { cause: "lost", reason: `worker ${address} left the pool` };
          stream.cancel();
        });
        const watchdog = new StallWatchdog(stallTimeoutMs, (silentMs) => {
          gone ??= { cause: "stalled", reason: `worker ${address} sent no heartbeat or progress for ${(silentMs / 1000).toFixed(1)} s (stall timeout ${stallTimeoutMs / 1000} s)` };
          stream.cancel();
          // Reaches the worker when it runs again; its run fences itself before that anyway.
          void this.deps.pool.client(address).cancelShard({ jobId: this.jobId, shard: shard.index }, { deadlineMs: stallTimeoutMs }).catch(() => {});
        });
        try {
          for await (const progress of stream) {
            watchdog.alive();
            if (progress.progress.case === "heartbeat") continue;
            recorded = recorded.then(() => this.onProgress(progress, address, shard.index));
            recorded.catch(() => {});
          }
        } finally {
          watchdog.stop();
          this.abort.signal.removeEventListener("abort", onAbort);
          offRemoved();
        }
        await recorded;
        return;
      } catch (err) {
        await recorded.catch(() => {});
        this.throwIfCancelled();
        const code = (err as { code?: number }).code;
        lastError = gone?.reason ?? ((err as { details?: string }).details || (err as Error).message);
        const cause: FailureCause = gone?.cause ?? (code === status.UNAVAILABLE || code === status.CANCELLED ? "lost" : "crashed");
        this.emit({ event: { case: "shardFailed", value: { shard: shard.index, worker: address, attempt, cause, reason: lastError } } });
        // Only replica 0 of a stage reports its blocks.
        if (shard.replica === 0) this.closeOpenBlocks(`shard ${shard.index} failed on ${address} (${cause})`, { address, first: shard.firstBlock, end: shard.endBlock });
        if (gone === undefined && code !== undefined && DETERMINISTIC.has(code)) throw new Error(lastError);
        this.deps.log(`job ${this.jobId}: shard ${shard.index} on ${address} failed (${cause}: ${lastError}); rerunning it`);
        this.deps.pool.markDead(address);
        const to = await this.pickWorker(address);
        this.emit({ event: { case: "shardReassigned", value: { shard: shard.index, fromWorker: address, toWorker: to, attempt: attempt + 1, cause } } });
        address = to;
      }
    }
  }

  /** A worker finalizes the output (copies the untouched weights, writes model.onnx). */
  private async finalizeOutput(): Promise<void> {
    await this.onAnyWorker("finalize the output", (client) => client.finalizeOutput({ jobId: this.jobId, plan: this.plan }, { deadlineMs: FINALIZE_DEADLINE_MS }));
  }

  /**
   * The profile pre-pass's facts per block (a worker lost midway is replaced: the pass is
   * deterministic, so any worker gives the same bits).
   */
  private async profileFacts(plan: JobPlan): Promise<number[][]> {
    const message = toPlanMessage(plan);
    const r = await this.onAnyWorker(`run the ${plan.sparsityProfile} pre-pass`, (client) => client.runProfile({ jobId: this.jobId, plan: message }, { deadlineMs: FINALIZE_DEADLINE_MS }));
    if (r.blocks.length !== plan.blocks) throw new Error(`the ${plan.sparsityProfile} pre-pass gave facts for ${r.blocks.length} blocks, the plan has ${plan.blocks}`);
    return r.blocks.map((b) => [...b.facts]);
  }

  /**
   * One call on the ready workers in turn, until one answers; a deterministic failure (bad plan,
   * output taken) ends it at once.
   */
  private async onAnyWorker<T>(what: string, call: (client: WorkerClient) => Promise<T>): Promise<T> {
    let lastError = "no ready worker";
    for (let attempt = 1; attempt <= 3; attempt++) {
      this.throwIfCancelled();
      await this.deps.pool.poll();
      for (const w of this.deps.pool.ready()) {
        try {
          return await call(this.deps.pool.client(w.address));
        } catch (err) {
          const code = (err as { code?: number }).code;
          lastError = (err as { details?: string }).details || (err as Error).message;
          if (code !== undefined && DETERMINISTIC.has(code)) throw new Error(lastError);
          this.deps.log(`job ${this.jobId}: ${what} on ${w.address} failed (${lastError}); trying another worker`);
        }
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    throw new Error(`no worker could ${what}: ${lastError}`);
  }

  /** Another ready worker if there is one (the failed one last), waiting a bounded time. */
  private async pickWorker(failed: string): Promise<string> {
    const deadline = Date.now() + (this.deps.reassignTimeoutMs ?? 60_000);
    for (;;) {
      this.throwIfCancelled();
      await this.deps.pool.poll();
      const ready = this.deps.pool.ready().map((w) => w.address);
      const others = ready.filter((a) => a !== failed);
      const busy = new Set(this.running.values());
      const pick = others.find((a) => !busy.has(a)) ?? others[0] ?? ready[0];
      if (pick) return pick;
      if (Date.now() > deadline) throw new Error(`no worker became ready within ${(this.deps.reassignTimeoutMs ?? 60_000) / 1000} s to rerun a shard`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** Where each replica of `shard`'s stage runs now (index = replica). */
  private stagePeers(shard: PlannedShard): string[] {
    return Array.from({ length: this.replicas }, (_, r) => {
      const i = shard.stage * this.replicas + r;
      return this.running.get(i) ?? this.shards[i]!.worker;
    });
  }

  private async onProgress(p: ShardProgress, address: string, shardIndex: number): Promise<void> {
    const v = p.progress;
    if (v.case === "blockStarted") {
      this.openBlocks.set(v.value.block, { label: v.value.label, worker: v.value.worker, address });
      this.emit({ event: { case: "blockStarted", value: v.value } });
    } else if (v.case === "blockFinished") {
      const b = v.value.block;
      if (this.done.has(b)) return; // a rerun shard reports blocks that were already done
      this.done.add(b);
      this.records.set(b, fromBlockFinished(v.value));
      this.openBlocks.delete(b);
      this.deps.metrics.blocksPruned.inc();
      this.deps.metrics.paramsPruned.inc(Number(v.value.pruned));
      this.deps.metrics.calibrationTokenPasses.inc(this.tokensPerBlock);
      this.deps.metrics.blockDuration.observe(v.value.seconds);
      const doneCount = this.done.size;
      await this.deps.store.update(this.jobId, (job) => {
        job.blocksDone = Math.max(job.blocksDone, doneCount);
        job.updatedUnixMs = BigInt(Date.now());
        const s = job.shards.find((x) => x.index === shardIndex);
        if (s) s.worker = address;
        // Only replica 0 of a stage reports blocks, and it records block b once every replica of
        // the stage has written its share of b: all of them count it (blocks finish in order).
        for (const r of job.shards) {
          if (r.stage === s?.stage && b >= r.firstBlock && b < r.endBlock) r.blocksDone = Math.max(r.blocksDone, b + 1 - r.firstBlock);
        }
      });
      this.emit({ event: { case: "blockFinished", value: v.value } });
    }
  }
}

export function isTerminal(state: JobState): boolean {
  return state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED;
}

export type { Job };
