/**
 * Mask selection over several threads. The calls made in one turn of the event loop (a block's
 * linears, which the engine compresses together) run as one batch, split by parameters: each
 * other thread gets whole linears, the largest first, up to its share, then a column range of
 * the linear its share ends in; the pool's own thread (the caller's) does the rest. Columns are
 * independent, so any split gives computeMask's bits. Matrix-scope masks (one threshold over the
 * whole matrix) cannot be split by columns and go whole to one thread each, round robin.
 *
 * A weight the caller lends (MaskJob.lend) and that goes whole to another thread moves there by
 * transfer (no copy) and back with the answer. Any other weight a thread reads is copied by this
 * thread into the thread's kernel memory, shared (above KERNEL_INPUT_AT), where its kernel reads
 * it in place (a transfer cannot hand one buffer to several threads). The copy overlaps the
 * threads' work: they get their tasks first, lent ones before copied ones, and read each copied
 * weight's rows as this thread copies them (counted in a shared Int32Array); this thread keeps a
 * smaller share the more it copies, learnt from the pool's own batches (maskShares.ts).
 * Every thread writes its columns straight into the linear's mask: the job's `into` where it is
 * shared memory (MaskBuffers recycles the masks this pool returns, block after block, so their
 * pages are mapped once), else a new SharedArrayBuffer of its own. Batches run one after another.
 *
 * The engine reads its weights into buffers the pool gives (weightBuffer), in the first thread's
 * memory below the batches' copies: that thread reads any columns of them in place, this thread
 * its own share, and nothing is copied or moved for the first thread.
 */
import { Worker } from "node:worker_threads";
import { InvalidArgumentError, RuntimeError } from "../errors.js";
import type { MaskRequest, MaskResponse, MaskTask } from "./maskProtocol.js";
import { checkMaskJob, computeMask, type MaskOptions, type MaskResult, type WeightMatrix } from "./maskSelect.js";
import { elementBytes, runMaskTaskOn } from "./maskTask.js";
import { runCopier } from "./byteCopy.js";
import { MaskShares } from "./maskShares.js";
import { KERNEL_INPUT_AT, SHARED_MAX_PAGES, sharedKernelMemory, type WasmMemory } from "./maskKernelWasm.js";
import { ResidentArena } from "./residentArena.js";

export interface MaskJob {
  weight: WeightMatrix;
  /** s[c] per input channel; null for magnitude */
  scale: Float64Array | null;
  options: MaskOptions;
  /**
   * in·out bytes to write the mask into (an earlier block's, recycled: no new pages to map);
   * absent: a new buffer. Mask threads write only into shared memory: with threads, an `into`
   * over an ArrayBuffer is left alone and the mask gets a new shared buffer.
   */
  into?: Uint8Array;
  /**
   * The pool may move the weight's buffer to a mask thread for the batch and back (a transfer:
   * no copy); `weight.bytes` is then a view of the same bytes over the returned buffer by the
   * time the mask resolves. Nothing may read that buffer meanwhile. Only a buffer that the view
   * spans whole, that no other job of the batch reads or writes, and that is not shared is moved.
   */
  lend?: boolean;
}

/** Column ranges start at multiples of this, so no thread gets a sliver of a tile. */
const COLUMN_ALIGN = 16;
/**
 * What copying a column for another thread costs this thread, relative to selecting its mask,
 * before the pool has measured it (4096x4096 float16 on 2 cores: ~0.1, with Buffer.copy).
 */
const COPY_COST = 0.1;

/** The pool's first batches, which the split does not learn from (see run). */
const WARM_UP_BATCHES = 3;

/**
 * The most weight bytes one batch puts in each thread's memory (wasm32 memories end at 4 GiB):
 * larger batches go in groups, and a single larger linear is done on this thread. Tests lower it.
 */
export const maskPoolLimits = { sharedBytes: SHARED_MAX_PAGES * 65536 - KERNEL_INPUT_AT };

/**
 * The most bytes of weights the first thread's memory holds for the engine (weightBuffer): half
 * of what a wasm32 memory can address, the rest left for the batches' copies. A Llama-3-8B block
 * in float16 takes ~0.44 GB; requests past it get plain buffers.
 */
export const RESIDENT_MAX_BYTES = 2 ** 31 - KERNEL_INPUT_AT;

const aligned8 = (n: number) => Math.ceil(n / 8) * 8; // keeps every typed view aligned

/** A task and the thread it is for (0: the pool's own). */
interface Placed {
  job: number;
  thread: number;
  task: MaskTask;
  /** the weight already lies in the thread's memory (weightBuffer): nothing to copy */
  inPlace?: boolean;
}

/** What a thread's request gives back: per task, what it pruned and its milliseconds; its lent buffers. */
type Done = MaskResponse;
type Pending = { resolve: (done: Done) => void; reject: (e: Error) => void };

/** A caller's jobs, waiting for the batch of their turn. */
interface Call {
  jobs: readonly MaskJob[];
  scopes: Array<"column" | "matrix">;
  resolve: (results: MaskResult[]) => void;
  reject: (e: Error) => void;
}

export class MaskPool {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private failure: Error | undefined;
  /** the batch running now (batches run one after another: they share the threads' memories) */
  private queue: Promise<unknown> = Promise.resolve();
  /** batches run so far */
  private batches = 0;
  /** requests pending per thread */
  private readonly inFlight: number[];
  /** calls of this turn of the event loop, run together as one batch at its end */
  private gathered: Call[] = [];
  /** params whose columns this thread copied for the others in the last batch */
  private lastCopied = 0;

  /** weight buffers in the first thread's memory (weightBuffer); null without threads */
  private readonly arena: ResidentArena | null;

  private constructor(readonly threads: number, private readonly workers: Worker[], private readonly memories: WasmMemory[], private readonly balance: MaskShares) {
    this.inFlight = workers.map(() => 0);
    this.arena = memories[0] ? new ResidentArena(memories[0], KERNEL_INPUT_AT, KERNEL_INPUT_AT + RESIDENT_MAX_BYTES) : null;
    for (const worker of workers) {
      worker.on("message", (res: MaskResponse) => {
        const p = this.pending.get(res.id);
        if (!p) return;
        this.pending.delete(res.id);
        p.resolve(res);
      });
      worker.on("error", (err) => this.fail(err));
      worker.on("exit", (code) => {
        if (!this.closed) this.fail(new RuntimeError("mask thread", `exited with code ${code}`));
      });
      // Idle threads must not keep the process alive; a batch in flight refs them (see call).
      worker.unref();
    }
  }

  /**
   * A pool of `threads` threads in all: this one plus threads-1 started here. `copyCost`: the
   * first guess of what copying a column costs this thread relative to selecting it (the pool
   * learns the real one; tests give extreme ones).
   */
  static start(threads: number, copyCost = COPY_COST): MaskPool {
    if (!Number.isSafeInteger(threads) || threads < 1) {
      throw new InvalidArgumentError("maskThreads", `must be a positive integer, got ${threads}`);
    }
    const memories = Array.from({ length: threads - 1 }, () => sharedKernelMemory(KERNEL_INPUT_AT));
    const workers = memories.map((memory) => new Worker(new URL("./maskThread.js", import.meta.url), { workerData: { memory } }));
    return new MaskPool(threads, workers, memories, new MaskShares(threads, copyCost));
  }

  /**
   * The masks of `jobs`, in order, as computeMask gives them. Errors are computeMask's too: on a
   * failure each call's jobs are rerun here in order, so its first failing job's typed error is
   * thrown whatever the thread count (and a call whose jobs do not fail gets its masks).
   */
  async computeMasks(jobs: readonly MaskJob[]): Promise<MaskResult[]> {
    if (this.closed) throw new RuntimeError("mask pool", "is closed");
    const scopes = jobs.map((j) => checkMaskJob(j.weight, j.scale, j.options));
    if (this.workers.length === 0) return jobs.map((j) => computeMask(j.weight, j.scale, j.options, j.into));
    return new Promise<MaskResult[]>((resolve, reject) => {
      // setImmediate, not a microtask: callers that await something before they call still join.
      if (this.gathered.push({ jobs, scopes, resolve, reject }) === 1) setImmediate(() => this.runGathered());
    });
  }

  /**
   * A buffer for a weight that will come to this pool as a job's `weight.bytes`: in the first
   * thread's memory, where that thread selects any of its columns in place and this thread reads
   * its own share, so no part of it is copied for a thread. Null without threads, once closed, or
   * past RESIDENT_MAX_BYTES (the caller takes a plain buffer then). Its contents are undefined;
   * give it back with releaseWeightBuffer once nothing reads it.
   */
  weightBuffer(byteLength: number): Uint8Array | null {
    return this.closed ? null : (this.arena?.acquire(byteLength) ?? null);
  }

  /** Gives back a weightBuffer for a later one of its size; false (and nothing done) for any other view. */
  releaseWeightBuffer(view: Uint8Array): boolean {
    return this.arena?.release(view) ?? false;
  }

  /** The calls gathered in this turn, as one batch after the batch before it. */
  private runGathered(): void {
    const calls = this.gathered;
    this.gathered = [];
    const batch = this.queue.then(() => this.runCalls(calls));
    this.queue = batch.catch(() => {});
  }

  private async runCalls(calls: readonly Call[]): Promise<void> {
    const jobs = calls.flatMap((c) => c.jobs);
    try {
      const results = await this.runInGroups(jobs, calls.flatMap((c) => c.scopes));
      let at = 0;
      for (const c of calls) c.resolve(results.slice(at, (at += c.jobs.length)));
    } catch (err) {
      const failure = err instanceof Error ? err : new RuntimeError("mask pool", String(err));
      for (const c of calls) {
        // Lost weights, or a pool that failed as a whole: nothing to rerun.
        if (failure instanceof LostWeightError || this.failure) c.reject(failure);
        else this.rerunHere(c);
      }
    }
  }

  /** A call's jobs here, in order: its first failing job's error, else its masks. */
  private rerunHere(c: Call): void {
    try {
      c.resolve(c.jobs.map((j) => computeMask(j.weight, j.scale, j.options, j.into)));
    } catch (err) {
      c.reject(err as Error);
    }
  }

  /** Groups of jobs whose weights fit the threads' memories, in order; a linear larger than that here. */
  private async runInGroups(jobs: readonly MaskJob[], scopes: Array<"column" | "matrix">): Promise<MaskResult[]> {
    if (this.closed) throw new RuntimeError("mask pool", "is closed");
    const results: MaskResult[] = [];
    // (the first thread's memory holds the weight buffers below its copies)
    const limit = maskPoolLimits.sharedBytes - (this.arena?.used ?? 0);
    let group: number[] = [];
    let bytes = 0;
    const flush = async () => {
      if (group.length > 0) results.push(...(await this.run(group.map((i) => jobs[i]!), group.map((i) => scopes[i]!))));
      group = [];
      bytes = 0;
    };
    for (let i = 0; i < jobs.length; i++) {
      const size = aligned8(jobs[i]!.weight.bytes.byteLength);
      if (bytes + size > limit) await flush();
      if (size > limit) {
        results.push(computeMask(jobs[i]!.weight, jobs[i]!.scale, jobs[i]!.options, jobs[i]!.into));
        continue;
      }
      group.push(i);
      bytes += size;
    }
    await flush();
    return results;
  }

  private async run(jobs: readonly MaskJob[], scopes: Array<"column" | "matrix">): Promise<MaskResult[]> {
    const masks = jobs.map(maskTarget);
    const { tasks, copied } = this.share(jobs, scopes, masks);
    this.lastCopied = copied;
    // The other threads get their tasks at once, lent weights and weights in their memory first
    // (they start on them at once), while this thread copies the other weights they read into
    // their memories, job by job and row by row; each thread reads the rows as they come (rows
    // counts them per job, and one slot more, always full, serves the weights read in place).
    // Then this thread does its own tasks.
    const rows = new SharedArrayBuffer(4 * (jobs.length + 1));
    new Int32Array(rows)[jobs.length] = 0x7fffffff;
    const first = (t: Placed) => Number(t.task.lent !== undefined || t.inPlace === true);
    const remoteTasks = tasks.filter((t) => t.thread !== 0).sort((x, y) => first(y) - first(x));
    const remote = remoteTasks.map(({ job, thread, task }) => ({ job, thread, task, done: this.call(thread - 1, { rows, tasks: [task] }, task.lent ? [task.lent] : []) }));
    const start = performance.now();
    jobs.forEach((j, job) => {
      const theirs = tasks.filter((t) => t.job === job && t.thread !== 0 && !t.task.lent && !t.inPlace).map((t) => ({ task: t.task, into: new Uint8Array(this.memories[t.thread - 1]!.buffer) }));
      if (theirs.length > 0) copyShare(j.weight, theirs, new Int32Array(rows), job);
    });
    const copiedAt = performance.now();
    const pruned = new Array<number>(jobs.length).fill(0);
    let failed = false;
    try {
      for (const { job, thread, task } of tasks) if (thread === 0) pruned[job]! += runMaskTaskOn(task, jobs[job]!.weight);
    } catch {
      failed = true;
    }
    const ownDone = performance.now();
    const settled = await Promise.allSettled(remote.map((r) => r.done));
    this.arena?.setFloor(0);
    const threadMs = new Array<number>(this.threads - 1).fill(0);
    const lost: string[] = [];
    settled.forEach((r, i) => {
      const { job, thread, task } = remote[i]!;
      const weight = jobs[job]!.weight;
      if (task.lent) {
        const back = r.status === "fulfilled" ? r.value.returned[0] : undefined;
        if (back) weight.bytes = new Uint8Array(back, task.byteOffset, params(weight) * elementBytes(weight.dataType));
        else lost.push(weight.name);
      }
      if (r.status === "rejected" || !r.value.ok) failed = true;
      else {
        pruned[job]! += r.value.pruned[0]!;
        threadMs[thread - 1]! += r.value.ms[0]!;
      }
    });
    if (lost.length > 0) throw new LostWeightError(lost, settled.find((r): r is PromiseRejectedResult => r.status === "rejected")?.reason);
    if (failed) {
      const answer = settled.find((r): r is PromiseFulfilledResult<Done> => r.status === "fulfilled" && !r.value.ok);
      const rejected = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
      throw rejected?.reason instanceof Error ? rejected.reason : new RuntimeError("mask thread", answer && !answer.value.ok ? answer.value.error : "a task failed");
    }
    // A batch with whole (matrix-scope) linears is not split by the shares, and the pool's first
    // few run each new thread's code while V8 is still compiling and optimizing it (the first
    // 5-10x slower, the next two ~1.5x): neither teaches anything about the machine.
    if (++this.batches > WARM_UP_BATCHES && tasks.every((t) => t.task.range !== "whole")) {
      this.balance.record({ ...splitOf(tasks, this.threads), copyMs: copiedAt - start, copied, ownMs: ownDone - copiedAt, threadMs });
    }
    return jobs.map((j, i) => ({ mask: masks[i]!, pruned: pruned[i]!, total: j.weight.inDim * j.weight.outDim }));
  }

  /**
   * The params (in·out) whose columns this thread copied into the other threads' memories in the
   * last batch (not those lent, or read in place from a weightBuffer); for tests and logs.
   */
  get copiedLastBatch(): number {
    return this.lastCopied;
  }

  /** The split the next batch of column-scope linears gets (thread 0: the pool's own); for tests and logs. */
  shares(): readonly number[] {
    return this.balance.shares();
  }

  /** Stops the threads; computeMasks fails afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fail(new RuntimeError("mask pool", "was closed while computing"));
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  /**
   * Cuts the batch into tasks (see the file's comment): a matrix-scope job whole to one thread,
   * round robin; column-scope jobs by cutColumns, each thread's share of their params.
   * A job whole on another thread and lendable goes there by transfer; whatever else another
   * thread reads gets a place in its memory (copied there by run()), which grows as needed.
   * Returns the tasks and the params whose columns this thread copies.
   */
  private share(jobs: readonly MaskJob[], scopes: Array<"column" | "matrix">, masks: readonly Uint8Array[]): { tasks: Placed[]; copied: number } {
    const lendable = lendableJobs(jobs, masks);
    const resident = jobs.map((j) => this.arena?.owns(j.weight.bytes) ?? false);
    const sizes = jobs.map((j) => params(j.weight));
    const columnJobs = jobs.map((_, i) => i).filter((i) => scopes[i] === "column").sort((x, y) => sizes[y]! - sizes[x]! || x - y);
    const columnParams = columnJobs.reduce((a, i) => a + sizes[i]!, 0);
    // The shares depend on how much this thread copies, which depends on the cut: from a first
    // guess (nothing, where something can be lent), cut once, then again with what that copies.
    const canLend = columnJobs.some((i) => lendable[i] || resident[i]);
    let cut = cutColumns(jobs, columnJobs, this.balance.shares(canLend ? 0 : 1), columnParams);
    if (canLend) cut = cutColumns(jobs, columnJobs, this.balance.shares(copiedPart(jobs, cut, lendable, resident)), columnParams);

    const pieces: Array<{ job: number; thread: number; range: MaskTask["range"] }> = [...cut];
    let nextWhole = 0;
    jobs.forEach((_, job) => {
      if (scopes[job] === "matrix") pieces.push({ job, thread: nextWhole++ % this.threads, range: "whole" });
    });
    // Places in each thread's memory, for the weights copied there.
    const placed = this.memories.map(() => new Map<number, number>());
    const ends = this.memories.map((_, t) => (t === 0 && this.arena ? Math.max(KERNEL_INPUT_AT, this.arena.top) : KERNEL_INPUT_AT));
    let copied = 0;
    const tasks: Placed[] = [];
    for (const { job, thread, range } of pieces) {
      const j = jobs[job]!;
      const { bytes, ...weight } = j.weight;
      const mask = masks[job]!;
      const base = { weight, scale: j.scale, options: j.options, masks: mask.buffer as SharedArrayBuffer, maskOffset: mask.byteOffset, range, rowsSlot: job };
      if (thread === 0) {
        tasks.push({ job, thread, task: { ...base, byteOffset: 0 } });
        continue;
      }
      if (thread === 1 && resident[job]) {
        tasks.push({ job, thread, inPlace: true, task: { ...base, byteOffset: bytes.byteOffset, rowsSlot: jobs.length } });
        continue;
      }
      const whole = range === "whole" || (range.begin === 0 && range.end === j.weight.outDim);
      if (whole && lendable[job]) {
        tasks.push({ job, thread, task: { ...base, byteOffset: bytes.byteOffset, lent: bytes.buffer as ArrayBuffer } });
        continue;
      }
      const at = placed[thread - 1]!;
      if (!at.has(job)) {
        at.set(job, ends[thread - 1]!);
        ends[thread - 1]! += aligned8(bytes.byteLength);
      }
      if (range !== "whole") copied += (range.end - range.begin) * j.weight.inDim;
      tasks.push({ job, thread, task: { ...base, byteOffset: at.get(job)! } });
    }
    this.memories.forEach((memory, t) => {
      const have = memory.buffer.byteLength;
      if (ends[t]! > have) memory.grow(Math.ceil((ends[t]! - have) / 65536));
    });
    // Weight buffers asked for while the batch runs go above its copies.
    this.arena?.setFloor(ends[0] ?? 0);
    return { tasks, copied };
  }

  private call(worker: number, req: Omit<MaskRequest, "id">, transfer: ArrayBuffer[] = []): Promise<Done> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    const w = this.workers[worker]!;
    // ref() does not count: a thread is unreferenced only when none of its requests is pending.
    if (this.inFlight[worker]!++ === 0) w.ref();
    return new Promise<Done>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ ...req, id }, transfer);
    }).finally(() => {
      if (--this.inFlight[worker]! === 0) w.unref();
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

/** A mask thread ended while it held lent weights: their bytes are gone with it. */
export class LostWeightError extends RuntimeError {
  constructor(readonly weights: readonly string[], cause?: unknown) {
    super(weights.join(", "), `lent to a mask thread that ended before giving ${weights.length === 1 ? "it" : "them"} back: the weights must be read again${cause instanceof Error ? ` (${cause.message})` : ""}`, { cause });
  }
}

const params = (w: { inDim: number; outDim: number }) => w.inDim * w.outDim;

/**
 * Which jobs' weights may move to a thread by transfer: lent, each the whole of a plain
 * ArrayBuffer that no other view of the batch (another job's weight, any mask) lies in.
 */
function lendableJobs(jobs: readonly MaskJob[], masks: readonly Uint8Array[]): boolean[] {
  const uses = new Map<ArrayBufferLike, number>();
  const count = (b: ArrayBufferLike) => uses.set(b, (uses.get(b) ?? 0) + 1);
  for (const j of jobs) count(j.weight.bytes.buffer);
  for (const m of masks) count(m.buffer);
  return jobs.map(({ lend, weight: { bytes } }) => lend === true && bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 &&
    bytes.byteLength === bytes.buffer.byteLength && bytes.byteLength > 0 && uses.get(bytes.buffer) === 1);
}

/**
 * Column-scope jobs cut for the threads, thread t getting `shares[t]` of `total` params: each
 * other thread in turn takes whole jobs that fit what it has left, largest first (`order`), then
 * runs of columns (starting at multiples of COLUMN_ALIGN) to fill the rest, from the smallest job
 * that still has enough; thread 0 (the pool's own) gets what is left. Only the runs are copied
 * (bin packing keeps them to a fraction of one linear), whole jobs can move by transfer.
 */
function cutColumns(jobs: readonly MaskJob[], order: readonly number[], shares: readonly number[], total: number): Array<{ job: number; thread: number; range: { begin: number; end: number } }> {
  const pieces: Array<{ job: number; thread: number; range: { begin: number; end: number } }> = [];
  // Per job, where its columns not yet given start (its outDim once all are given).
  const from = new Map(order.map((j) => [j, 0]));
  const size = (j: number) => jobs[j]!.weight.inDim * (jobs[j]!.weight.outDim - from.get(j)!);
  const give = (job: number, thread: number, end: number) => {
    pieces.push({ job, thread, range: { begin: from.get(job)!, end } });
    from.set(job, end);
  };
  for (let t = 1; t < shares.length; t++) {
    let left = shares[t]! * total;
    for (const j of order) {
      if (from.get(j) === 0 && size(j) > 0 && size(j) <= left) {
        left -= size(j);
        give(j, t, jobs[j]!.weight.outDim);
      }
    }
    for (;;) {
      const open = order.filter((j) => size(j) > 0);
      if (open.length === 0) break;
      const job = open.filter((j) => size(j) >= left).at(-1) ?? open[0]!;
      const { inDim, outDim } = jobs[job]!.weight;
      const columns = Math.round(left / inDim / COLUMN_ALIGN) * COLUMN_ALIGN;
      if (columns <= 0) break;
      const end = Math.min(outDim, from.get(job)! + columns);
      left -= (end - from.get(job)!) * inDim;
      give(job, t, end);
    }
  }
  for (const j of order) if (size(j) > 0) give(j, 0, jobs[j]!.weight.outDim);
  return pieces;
}

/** The part of the other threads' params whose columns this thread would copy with a cut (1 where they have none). */
function copiedPart(jobs: readonly MaskJob[], cut: ReturnType<typeof cutColumns>, lendable: readonly boolean[], resident: readonly boolean[]): number {
  let others = 0;
  let copied = 0;
  for (const { job, thread, range } of cut) {
    if (thread === 0) continue;
    const { inDim, outDim } = jobs[job]!.weight;
    const n = (range.end - range.begin) * inDim;
    others += n;
    if (!(lendable[job] && range.begin === 0 && range.end === outDim) && !(thread === 1 && resident[job])) copied += n;
  }
  return others > 0 ? copied / others : 1;
}

/** The shares a batch of column ranges ran with, as the columns fell (ranges are aligned), by parameters. */
function splitOf(tasks: readonly Placed[], threads: number): { shares: number[]; params: number } {
  const params = new Array<number>(threads).fill(0);
  for (const { thread, task } of tasks) {
    if (task.range !== "whole") params[thread]! += (task.range.end - task.range.begin) * task.weight.inDim;
  }
  const total = params.reduce((a, b) => a + b, 0);
  return { shares: params.map((p) => (total > 0 ? p / total : 0)), params: total };
}

/**
 * Where a job's mask is written: its `into` where that is shared memory of the right size (every
 * task writes all bytes of its columns, a whole task clears first), else a new shared buffer.
 */
function maskTarget(j: MaskJob): Uint8Array {
  const total = j.weight.inDim * j.weight.outDim;
  if (j.into && j.into.buffer instanceof SharedArrayBuffer && j.into.length === total) return j.into;
  return new Uint8Array(new SharedArrayBuffer(total));
}

/** Rows copied between two notices to the threads waiting for them. */
const ROWS_PER_NOTICE = 128;

/**
 * Copies the columns that each thread's tasks of one weight read (all of them for a whole task)
 * into that thread's memory, counting the input rows done in copied[slot] for the threads reading
 * them: row by row for column ranges of [in, out] storage, else in one run per thread.
 */
function copyShare(w: WeightMatrix, shares: ReadonlyArray<{ task: MaskTask; into: Uint8Array }>, copied: Int32Array, slot: number): void {
  const done = (r: number) => {
    Atomics.store(copied, slot, r);
    Atomics.notify(copied, slot);
  };
  try {
    const size = elementBytes(w.dataType);
    const parts = shares.map(({ task, into }) => {
      const [begin, end] = task.range === "whole" ? [0, w.outDim] : [task.range.begin, task.range.end];
      return { copy: runCopier(w.bytes, into.subarray(task.byteOffset, task.byteOffset + w.bytes.byteLength)), begin, end };
    });
    if (w.layout === "out_in" || parts.some((p) => p.begin === 0 && p.end === w.outDim)) {
      for (const { copy, begin, end } of parts) {
        const [from, to] = w.layout === "in_out" ? [0, w.inDim * w.outDim] : [begin * w.inDim, end * w.inDim];
        copy(from * size, from * size, (to - from) * size);
      }
      return;
    }
    for (let c = 0; c < w.inDim; c++) {
      for (const { copy, begin, end } of parts) {
        const from = (c * w.outDim + begin) * size;
        copy(from, from, (end - begin) * size);
      }
      if ((c + 1) % ROWS_PER_NOTICE === 0) done(c + 1);
    }
  } finally {
    // (also if the copy failed: no thread may wait forever; the batch fails anyway)
    done(w.inDim);
  }
}
