/**
 * Mask selection over several threads: a block's masks are split by output-column ranges of each
 * linear (columns are independent, so any split gives computeMask's bits), one range per thread,
 * the calling thread computing the first. Matrix-scope masks (one threshold over the whole
 * matrix) cannot be split by columns and go whole to one thread each, round robin.
 *
 * The threads start once, with the pool, and live until close(). The columns the other threads
 * read are copied into a shared buffer the pool keeps between batches (a transfer, which
 * bench/maskBench.ts measures as much cheaper, cannot hand one buffer to several threads), and
 * the masks are written into a new shared buffer per batch, which the results view directly.
 * The copy overlaps the threads' work: they get their tasks first and read each weight's rows as
 * this thread copies them (counted in a shared Int32Array), and map the new mask buffer's pages
 * meanwhile; this thread, which copies, keeps a smaller share (COPY_COST).
 */
import { Worker } from "node:worker_threads";
import { InvalidArgumentError, RuntimeError } from "../errors.js";
import type { MaskRequest, MaskResponse, MaskTask } from "./maskProtocol.js";
import { checkMaskJob, computeMask, type MaskOptions, type MaskResult, type WeightMatrix } from "./maskSelect.js";
import { elementBytes, runMaskTaskOn } from "./maskTask.js";

export interface MaskJob {
  weight: WeightMatrix;
  /** s[c] per input channel; null for magnitude */
  scale: Float64Array | null;
  options: MaskOptions;
}

/** Column ranges start at multiples of this, so no thread gets a sliver of a tile. */
const COLUMN_ALIGN = 16;
/**
 * What copying a column for another thread costs this thread, relative to selecting its mask
 * (4096x4096 float16 on 2 cores: ~0.12). The pool's own thread, which copies the others'
 * columns, keeps that much less, so that all end together.
 */
const COPY_COST = 0.12;

/** A task and the thread it is for (0: the pool's own). */
interface Placed {
  job: number;
  thread: number;
  task: MaskTask;
}

type Pending = { resolve: (pruned: number[]) => void; reject: (e: Error) => void };

export class MaskPool {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  private failure: Error | undefined;
  /** the shared copy of the weights, reused by the next batch unless one is still running */
  private scratch: SharedArrayBuffer | undefined;
  private busy = false;
  /** requests pending per thread */
  private readonly inFlight: number[];

  /** the fraction of each column-scope linear this thread keeps (the others share the rest) */
  private readonly ownShare: number;

  private constructor(readonly threads: number, private readonly workers: Worker[]) {
    this.inFlight = workers.map(() => 0);
    // Own share s0 plus copying the others' (1 - s0) ends with their share (1 - s0) / (n - 1).
    const others = threads - 1;
    this.ownShare = others === 0 ? 1 : Math.max(0, (1 - COPY_COST * others) / (1 + others - COPY_COST * others));
    for (const worker of workers) {
      worker.on("message", (res: MaskResponse) => {
        const p = this.pending.get(res.id);
        if (!p) return;
        this.pending.delete(res.id);
        if (res.ok) p.resolve(res.pruned);
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

  /** A pool of `threads` threads in all: this one plus threads-1 started here. */
  static start(threads: number): MaskPool {
    if (!Number.isSafeInteger(threads) || threads < 1) {
      throw new InvalidArgumentError("maskThreads", `must be a positive integer, got ${threads}`);
    }
    const workers = Array.from({ length: threads - 1 }, () => new Worker(new URL("./maskThread.js", import.meta.url)));
    return new MaskPool(threads, workers);
  }

  /**
   * The masks of `jobs`, in order, as computeMask gives them. Errors are computeMask's too: on a
   * failure the jobs are rerun here in order, so the first failing job's typed error is thrown
   * whatever the thread count.
   */
  async computeMasks(jobs: readonly MaskJob[]): Promise<MaskResult[]> {
    if (this.closed) throw new RuntimeError("mask pool", "is closed");
    const scopes = jobs.map((j) => checkMaskJob(j.weight, j.scale, j.options));
    if (this.workers.length === 0) return jobs.map((j) => computeMask(j.weight, j.scale, j.options));

    const { weights, masks, tasks } = this.share(jobs, scopes);
    const ownsScratch = !this.busy && weights === this.scratch;
    if (ownsScratch) this.busy = true;
    try {
      return await this.run(jobs, weights, masks, tasks);
    } finally {
      if (ownsScratch) this.busy = false;
    }
  }

  private async run(jobs: readonly MaskJob[], weights: SharedArrayBuffer, masks: SharedArrayBuffer, tasks: Placed[]): Promise<MaskResult[]> {
    // The other threads get their tasks at once and map the new mask buffer's pages (a slice
    // each) while this thread copies their weights, job by job and row by row; each thread reads
    // the rows as they come (rows counts them per job). Then this thread does its own shares.
    const rows = new SharedArrayBuffer(4 * Math.max(1, jobs.length));
    const others = this.workers.length;
    const touched = this.workers.map((_, i) => {
      const slice = (t: number) => Math.floor((masks.byteLength * t) / others);
      return this.call(i, { weights, masks, rows, tasks: [], touch: { begin: slice(i), end: slice(i + 1) } });
    });
    const remote = tasks.filter((t) => t.thread !== 0).map(({ job, thread, task }) => ({ job, done: this.call(thread - 1, { weights, masks, rows, tasks: [task] }) }));
    jobs.forEach((j, job) => {
      const theirs = tasks.filter((t) => t.job === job && t.thread !== 0).map((t) => t.task);
      if (theirs.length > 0) copyShare(j.weight, theirs, weights, new Int32Array(rows), job);
    });
    const pruned = new Array<number>(jobs.length).fill(0);
    let failed = false;
    try {
      for (const { job, thread, task } of tasks) if (thread === 0) pruned[job]! += runMaskTaskOn(task, jobs[job]!.weight, masks);
    } catch {
      failed = true;
    }
    const settled = await Promise.allSettled([...remote.map((r) => r.done), ...touched]);
    settled.forEach((r, i) => {
      if (r.status === "rejected") failed = true;
      else if (i < remote.length) pruned[remote[i]!.job]! += r.value[0]!;
    });
    if (failed) throw this.firstError(jobs, settled);
    let offset = 0;
    return jobs.map((j, i) => {
      const total = j.weight.inDim * j.weight.outDim;
      const mask = new Uint8Array(masks, offset, total);
      offset += total;
      return { mask, pruned: pruned[i]!, total };
    });
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
   * thread. Allocates the shared buffers (the weights are copied into them by run()).
   */
  private share(jobs: readonly MaskJob[], scopes: Array<"column" | "matrix">): { weights: SharedArrayBuffer; masks: SharedArrayBuffer; tasks: Placed[] } {
    const byteOffsets: number[] = [];
    let bytes = 0;
    for (const j of jobs) {
      byteOffsets.push(bytes);
      bytes += Math.ceil(j.weight.bytes.byteLength / 8) * 8; // keeps every typed view aligned
    }
    if (!this.busy && (this.scratch?.byteLength ?? -1) < bytes) this.scratch = new SharedArrayBuffer(bytes);
    const weights = this.busy ? new SharedArrayBuffer(bytes) : this.scratch!;
    const masks = new SharedArrayBuffer(jobs.reduce((a, j) => a + j.weight.inDim * j.weight.outDim, 0));
    const tasks: Placed[] = [];
    const otherShare = (1 - this.ownShare) / (this.threads - 1);
    let maskOffset = 0;
    let nextWhole = 0;
    jobs.forEach((j, job) => {
      const { bytes: _, ...weight } = j.weight;
      const base = { weight, byteOffset: byteOffsets[job]!, scale: j.scale, options: j.options, maskOffset, rowsSlot: job };
      maskOffset += j.weight.inDim * j.weight.outDim;
      if (scopes[job] === "matrix") {
        tasks.push({ job, thread: nextWhole++ % this.threads, task: { ...base, range: "whole" } });
        return;
      }
      const out = j.weight.outDim;
      const cut = (t: number) => Math.min(out, Math.round((out * (t === 0 ? 0 : this.ownShare + (t - 1) * otherShare)) / COLUMN_ALIGN) * COLUMN_ALIGN);
      for (let thread = 0; thread < this.threads; thread++) {
        const begin = cut(thread);
        const end = thread === this.threads - 1 ? out : cut(thread + 1);
        if (end > begin) tasks.push({ job, thread, task: { ...base, range: { begin, end } } });
      }
    });
    return { weights, masks, tasks };
  }

  private call(worker: number, req: Omit<MaskRequest, "id">): Promise<number[]> {
    if (this.failure) return Promise.reject(this.failure);
    if (req.tasks.length === 0 && !req.touch) return Promise.resolve([]);
    const id = this.nextId++;
    const w = this.workers[worker]!;
    // ref() does not count: a thread is unreferenced only when none of its requests is pending.
    if (this.inFlight[worker]!++ === 0) w.ref();
    return new Promise<number[]>((resolve, reject) => {
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
  private firstError(jobs: readonly MaskJob[], settled: Array<PromiseSettledResult<number[]>>): Error {
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

/** Rows copied between two notices to the threads waiting for them. */
const ROWS_PER_NOTICE = 128;

/**
 * Copies the columns that tasks of one weight read (all of them for a whole task) to shared
 * memory, counting the input rows done in copied[slot] for the threads reading them: row by row
 * for a column range of [in, out] storage, else in one run.
 */
function copyShare(w: WeightMatrix, tasks: readonly MaskTask[], weights: SharedArrayBuffer, copied: Int32Array, slot: number): void {
  const done = (r: number) => {
    Atomics.store(copied, slot, r);
    Atomics.notify(copied, slot);
  };
  try {
    const size = elementBytes(w.dataType);
    let begin = w.outDim;
    let end = 0;
    for (const t of tasks) {
      begin = Math.min(begin, t.range === "whole" ? 0 : t.range.begin);
      end = Math.max(end, t.range === "whole" ? w.outDim : t.range.end);
    }
    const view = new Uint8Array(weights, tasks[0]!.byteOffset, w.bytes.byteLength);
    if (w.layout === "out_in" || (begin === 0 && end === w.outDim)) {
      const [from, to] = w.layout === "in_out" ? [0, w.inDim * w.outDim] : [begin * w.inDim, end * w.inDim];
      view.set(w.bytes.subarray(from * size, to * size), from * size);
      return;
    }
    for (let c = 0; c < w.inDim; c++) {
      const from = (c * w.outDim + begin) * size;
      view.set(w.bytes.subarray(from, from + (end - begin) * size), from);
      if ((c + 1) % ROWS_PER_NOTICE === 0) done(c + 1);
    }
  } finally {
    // (also if the copy failed: no thread may wait forever; the batch fails anyway)
    done(w.inDim);
  }
}
