/**
 * Mask selection over several threads: a block's masks are split by output-column ranges of each
 * linear (columns are independent, so any split gives computeMask's bits), one range per thread,
 * the calling thread computing the first. Matrix-scope masks (one threshold over the whole
 * matrix) cannot be split by columns and go whole to one thread each, round robin.
 *
 * The threads start once, with the pool, and live until close(). Each thread's WebAssembly kernel
 * works in a shared memory the pool holds too: this thread copies the columns a thread reads
 * straight into that memory (above KERNEL_INPUT_AT), where the kernel reads them in place (a
 * transfer, which bench/maskBench.ts measures as much cheaper, cannot hand one buffer to several
 * threads). The copy overlaps the threads' work: they get their tasks first and read each
 * weight's rows as this thread copies them (counted in a shared Int32Array); this thread, which
 * copies, keeps a smaller share, learnt from the pool's own batches (maskShares.ts).
 * Every thread writes its columns straight into the linear's mask: the job's `into` where it is
 * shared memory (MaskBuffers recycles the masks this pool returns, block after block, so their
 * pages are mapped once), else a new SharedArrayBuffer of its own. Batches run one after another.
 */
import { Worker } from "node:worker_threads";
import { InvalidArgumentError, RuntimeError } from "../errors.js";
import type { MaskRequest, MaskResponse, MaskTask } from "./maskProtocol.js";
import { checkMaskJob, computeMask, type MaskOptions, type MaskResult, type WeightMatrix } from "./maskSelect.js";
import { elementBytes, runMaskTaskOn } from "./maskTask.js";
import { runCopier } from "./byteCopy.js";
import { MaskShares } from "./maskShares.js";
import { KERNEL_INPUT_AT, SHARED_MAX_PAGES, sharedKernelMemory, type WasmMemory } from "./maskKernelWasm.js";

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

const aligned8 = (n: number) => Math.ceil(n / 8) * 8; // keeps every typed view aligned

/** A task and the thread it is for (0: the pool's own). */
interface Placed {
  job: number;
  thread: number;
  task: MaskTask;
}

/** What a thread's request gives back: per task, what it pruned and its milliseconds. */
type Done = { pruned: number[]; ms: number[] };
type Pending = { resolve: (done: Done) => void; reject: (e: Error) => void };

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

  private constructor(readonly threads: number, private readonly workers: Worker[], private readonly memories: WasmMemory[], private readonly balance: MaskShares) {
    this.inFlight = workers.map(() => 0);
    for (const worker of workers) {
      worker.on("message", (res: MaskResponse) => {
        const p = this.pending.get(res.id);
        if (!p) return;
        this.pending.delete(res.id);
        if (res.ok) p.resolve({ pruned: res.pruned, ms: res.ms });
        else p.reject(new RuntimeError("mask thread", res.error));
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
   * failure the jobs are rerun here in order, so the first failing job's typed error is thrown
   * whatever the thread count.
   */
  async computeMasks(jobs: readonly MaskJob[]): Promise<MaskResult[]> {
    if (this.closed) throw new RuntimeError("mask pool", "is closed");
    const scopes = jobs.map((j) => checkMaskJob(j.weight, j.scale, j.options));
    if (this.workers.length === 0) return jobs.map((j) => computeMask(j.weight, j.scale, j.options, j.into));
    const batch = this.queue.then(() => this.runInGroups(jobs, scopes));
    this.queue = batch.catch(() => {});
    return batch;
  }

  /** Groups of jobs whose weights fit the threads' memories, in order; a linear larger than that here. */
  private async runInGroups(jobs: readonly MaskJob[], scopes: Array<"column" | "matrix">): Promise<MaskResult[]> {
    if (this.closed) throw new RuntimeError("mask pool", "is closed");
    const results: MaskResult[] = [];
    let group: number[] = [];
    let bytes = 0;
    const flush = async () => {
      if (group.length > 0) results.push(...(await this.run(group.map((i) => jobs[i]!), group.map((i) => scopes[i]!))));
      group = [];
      bytes = 0;
    };
    for (let i = 0; i < jobs.length; i++) {
      const size = aligned8(jobs[i]!.weight.bytes.byteLength);
      if (bytes + size > maskPoolLimits.sharedBytes) await flush();
      if (size > maskPoolLimits.sharedBytes) {
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
    const tasks = this.share(jobs, scopes, masks);
    // The other threads get their tasks at once, while this thread copies their weights into
    // their memories, job by job and row by row; each thread reads the rows as they come (rows
    // counts them per job). Then this thread does its own shares.
    const rows = new SharedArrayBuffer(4 * Math.max(1, jobs.length));
    const remote = tasks.filter((t) => t.thread !== 0).map(({ job, thread, task }) => ({ job, thread, done: this.call(thread - 1, { rows, tasks: [task] }) }));
    const start = performance.now();
    jobs.forEach((j, job) => {
      const theirs = tasks.filter((t) => t.job === job && t.thread !== 0).map((t) => ({ task: t.task, into: new Uint8Array(this.memories[t.thread - 1]!.buffer) }));
      if (theirs.length > 0) copyShare(j.weight, theirs, new Int32Array(rows), job);
    });
    const copied = performance.now();
    const pruned = new Array<number>(jobs.length).fill(0);
    let failed = false;
    try {
      for (const { job, thread, task } of tasks) if (thread === 0) pruned[job]! += runMaskTaskOn(task, jobs[job]!.weight);
    } catch {
      failed = true;
    }
    const ownDone = performance.now();
    const settled = await Promise.allSettled(remote.map((r) => r.done));
    const threadMs = new Array<number>(this.threads - 1).fill(0);
    settled.forEach((r, i) => {
      if (r.status === "rejected") failed = true;
      else {
        pruned[remote[i]!.job]! += r.value.pruned[0]!;
        threadMs[remote[i]!.thread - 1]! += r.value.ms[0]!;
      }
    });
    if (failed) throw this.firstError(jobs, settled);
    // A batch with whole (matrix-scope) linears is not split by the shares, and the pool's first
    // few run each new thread's code while V8 is still compiling and optimizing it (the first
    // 5-10x slower, the next two ~1.5x): neither teaches anything about the machine.
    if (++this.batches > WARM_UP_BATCHES && tasks.every((t) => t.task.range !== "whole")) {
      this.balance.record({ ...splitOf(tasks, this.threads), copyMs: copied - start, ownMs: ownDone - copied, threadMs });
    }
    return jobs.map((j, i) => ({ mask: masks[i]!, pruned: pruned[i]!, total: j.weight.inDim * j.weight.outDim }));
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
   * Cuts every job into tasks: column ranges, one per thread; a matrix-scope job whole to one
   * thread. Places the weights in the threads' memories (copied there by run()), growing them
   * as needed.
   */
  private share(jobs: readonly MaskJob[], scopes: Array<"column" | "matrix">, masks: readonly Uint8Array[]): Placed[] {
    const byteOffsets: number[] = [];
    let bytes = KERNEL_INPUT_AT;
    for (const j of jobs) {
      byteOffsets.push(bytes);
      bytes += aligned8(j.weight.bytes.byteLength);
    }
    for (const memory of this.memories) {
      const have = memory.buffer.byteLength;
      if (bytes > have) memory.grow(Math.ceil((bytes - have) / 65536));
    }
    const tasks: Placed[] = [];
    // Thread t's columns start at the shares of the threads before it.
    const starts = [0];
    for (const share of this.balance.shares()) starts.push(starts.at(-1)! + share);
    let nextWhole = 0;
    jobs.forEach((j, job) => {
      const { bytes: _, ...weight } = j.weight;
      const mask = masks[job]!;
      const base = { weight, byteOffset: byteOffsets[job]!, scale: j.scale, options: j.options, masks: mask.buffer as SharedArrayBuffer, maskOffset: mask.byteOffset, rowsSlot: job };
      if (scopes[job] === "matrix") {
        tasks.push({ job, thread: nextWhole++ % this.threads, task: { ...base, range: "whole" } });
        return;
      }
      const out = j.weight.outDim;
      const cut = (t: number) => Math.min(out, Math.round((out * starts[t]!) / COLUMN_ALIGN) * COLUMN_ALIGN);
      for (let thread = 0; thread < this.threads; thread++) {
        const begin = cut(thread);
        const end = thread === this.threads - 1 ? out : cut(thread + 1);
        if (end > begin) tasks.push({ job, thread, task: { ...base, range: { begin, end } } });
      }
    });
    return tasks;
  }

  private call(worker: number, req: Omit<MaskRequest, "id">): Promise<Done> {
    if (this.failure) return Promise.reject(this.failure);
    if (req.tasks.length === 0) return Promise.resolve({ pruned: [], ms: [] });
    const id = this.nextId++;
    const w = this.workers[worker]!;
    // ref() does not count: a thread is unreferenced only when none of its requests is pending.
    if (this.inFlight[worker]!++ === 0) w.ref();
    return new Promise<Done>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ ...req, id });
    }).finally(() => {
      if (--this.inFlight[worker]! === 0) w.unref();
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /** The error computeMask gives for the first failing job, else the threads' own. */
  private firstError(jobs: readonly MaskJob[], settled: Array<PromiseSettledResult<Done>>): Error {
    for (const j of jobs) {
      try {
        computeMask(j.weight, j.scale, j.options);
      } catch (err) {
        return err as Error;
      }
    }
    const rejected = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
    return rejected?.reason instanceof Error ? rejected.reason : new RuntimeError("mask pool", "a mask thread failed");
  }
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
