/**
 * SparseGPT's solves over several threads: the factorization of each distinct input's Hessian
 * (steps 3-5) and each linear's OBS update (steps 6-7) are tasks, run on `threads` solve threads
 * while this one (the event loop: gRPC, NATS, the engine) waits; so are row ranges of each
 * sample's Hessian addition, and TAMP's per-linear, per-sample density and AMIA subset. Each task
 * is the one-thread function on the same inputs, so every thread count gives the same bits.
 *
 * Nothing large is copied: H is accumulated in shared memory and U is allocated in shared
 * memory by the thread that factors it, so the linears that read one input (q/k/v, gate/up) read
 * one H and one U wherever they run; a linear's weight is the copy SparseGPT updates anyway,
 * moved to its thread and back by transfer.
 *
 * Tasks wait in one queue and an idle thread takes the costliest ready one (a factorization
 * costs ~n³/3, an update ~in²·out multiply-adds): the engine submits a block's factorizations in
 * one turn and each linear's update once its input is factored, so the widest input's chain
 * (down_proj: its factorization, then its update) starts first. A factorization that finds
 * several threads idle runs on all of them as a team (solveTeam.ts): otherwise it would be the
 * block's longest chain, one thread's work while the others run out of tasks.
 */
import { Worker } from "node:worker_threads";
import { InvalidArgumentError, NumericError, RuntimeError, TypedError } from "../errors.js";
import type { WeightMatrix } from "./maskSelect.js";
import type { FactorTask, SolveFailure, SolveRequest, SolveResponse, SolveResult, SolveTask } from "./solveProtocol.js";
import type { SampleRows, SampleRowsSolver } from "./hessian.js";
import type { Density, TokenRows } from "./tampDensity.js";
import type { AmiaSelection } from "./amiaSelect.js";
import { runCopier } from "./byteCopy.js";
import { choleskyMemory } from "./choleskyKernelWasm.js";
import { abortTeam, balancedShares, evenSplit, isTeamAbort, teamControl, type TeamSplit } from "./solveTeam.js";
import { SPARSEGPT_PERCDAMP, outputEnergy, prepareHessian, sparseGptUpdate, type PreparedHessian, type SparseGptOptions, type SparseGptUpdate } from "./sparseGpt.js";

/** A linear's updated weight bytes (its own type and layout) and what the update did. */
export interface UpdatedLinear {
  bytes: Uint8Array;
  update: SparseGptUpdate;
}

/**
 * TAMP's per-linear, per-sample token work, on the threads: the output's density (DAS) and the
 * AMIA token subset, each O(T²·d). The rows (a fresh copy, attendedRows) move by transfer.
 */
export interface TokenWork {
  density(rows: TokenRows, visual: Uint8Array): Promise<Density>;
  amia(rows: TokenRows, attention: Float64Array, visual: Uint8Array): Promise<AmiaSelection>;
}

/** Where SparseGPT's solves run: here, one after another (INLINE_SOLVER), or on a SolvePool. */
export interface Solver extends Partial<SampleRowsSolver>, Partial<TokenWork> {
  /** Steps 3-5 for one input's H (not modified). */
  factor(hessian: Float64Array, n: number, subject: string): Promise<PreparedHessian>;
  /** tr(BᵀHB) of `weight` (relativeError's denominator). */
  energy(weight: WeightMatrix, hessian: Float64Array): Promise<number>;
  /** Steps 6-7 on a copy of `weight` (not modified). */
  update(weight: WeightMatrix, prepared: PreparedHessian, options: SparseGptOptions): Promise<UpdatedLinear>;
}

/** The one-thread solver: each solve on this thread when asked. */
export const INLINE_SOLVER: Solver = {
  factor: async (hessian, n, subject) => prepareHessian(hessian, n, subject, SPARSEGPT_PERCDAMP),
  energy: async (weight, hessian) => outputEnergy(hessian, weight),
  update: async (weight, prepared, options) => {
    const copy = { ...weight, bytes: weight.bytes.slice() };
    return { update: sparseGptUpdate(copy, prepared, options), bytes: copy.bytes };
  },
};

/** A team's progress: members yet to answer, the first answer, the error to report, each member's phase times. */
interface TeamRun {
  left: number;
  control: Int32Array;
  key: string;
  split: TeamSplit;
  inverseMs: number[];
  productMs: number[];
  result?: SolveResult;
  error?: TypedError;
}

interface Queued {
  task: SolveTask;
  cost: number;
  /** submission order, for ties */
  seq: number;
  transfer: ArrayBuffer[];
  resolve: (result: SolveResult) => void;
  reject: (err: Error) => void;
}

/**
 * rowsWork: the least work (multiply-adds: pooled tokens · n(n+1)/2) for which a sample's Hessian
 * rows go to the threads: below it the messages cost more than they save. teamInputs: the fewest
 * inputs n for which a factorization runs as a team (its n barriers then cost well under 1%).
 * Tests lower both.
 */
export const solvePoolLimits = { rowsWork: 1 << 22, teamInputs: 768 };

export class SolvePool implements Solver, SampleRowsSolver, TokenWork {
  private workers: Worker[] | undefined;
  private readonly idle: number[] = [];
  private readonly queue: Queued[] = [];
  private readonly running = new Map<number, Queued & { thread: number; team?: TeamRun; rank?: number }>();
  /** Learnt team splits, by input width and team size. */
  private readonly splits = new Map<string, TeamSplit>();
  private nextId = 1;
  private seq = 0;
  private dispatchSoon = false;
  private closed = false;
  private failure: Error | undefined;

  /** `threads` solve threads, started with the first task (a job whose method never solves starts none). */
  constructor(readonly threads: number) {
    if (!Number.isSafeInteger(threads) || threads < 1) throw new InvalidArgumentError("maskThreads", `must be a positive integer, got ${threads}`);
  }

  async factor(hessian: Float64Array, n: number, subject: string): Promise<PreparedHessian> {
    const h = shared(hessian);
    const r = await this.submit({ kind: "factor", hessian: h, n, subject, percDamp: SPARSEGPT_PERCDAMP }, (n * n * n) / 3, []);
    if (r.kind !== "factor") throw new RuntimeError("solve pool", `a factor task answered ${r.kind}`);
    return { hessian: h, u: r.u, dead: r.dead, n };
  }

  async energy(weight: WeightMatrix, hessian: Float64Array): Promise<number> {
    const bytes = weight.bytes.slice();
    const r = await this.submit({ kind: "energy", weight: { ...weight, bytes }, hessian: shared(hessian) }, (weight.inDim * weight.inDim * weight.outDim) / 2, [bytes.buffer as ArrayBuffer]);
    if (r.kind !== "energy") throw new RuntimeError("solve pool", `an energy task answered ${r.kind}`);
    return r.energy;
  }

  async update(weight: WeightMatrix, prepared: PreparedHessian, options: SparseGptOptions): Promise<UpdatedLinear> {
    // The copy SparseGPT updates, in a buffer of its own so that it can move to the thread.
    const bytes = weight.bytes.slice();
    const task = { kind: "update" as const, weight: { ...weight, bytes }, prepared: { ...prepared, hessian: shared(prepared.hessian), u: shared(prepared.u) }, options };
    // The OBS update and the error's quadratic form, ~in²·out multiply-adds each.
    const r = await this.submit(task, (3 / 2) * weight.inDim * weight.inDim * weight.outDim, [bytes.buffer as ArrayBuffer]);
    if (r.kind !== "update") throw new RuntimeError("solve pool", `an update task answered ${r.kind}`);
    return { bytes: r.bytes, update: r.update };
  }

  /**
   * One sample's addition to a Hessian (HessianAccumulator.add), as row ranges of equal work, one
   * per thread; undefined (the caller adds it) where it is too small to gain from threads.
   */
  addSampleRows(target: { sample?: Float64Array; sum: Float64Array }, src: SampleRows): Promise<void> | undefined {
    const { n } = src;
    let pooled = 0;
    for (const p of src.pool) pooled += p ? 1 : 0;
    if (this.threads < 2 || pooled * ((n * (n + 1)) / 2) < solvePoolLimits.rowsWork) return undefined;
    if (!(target.sum.buffer instanceof SharedArrayBuffer) || (target.sample && !(target.sample.buffer instanceof SharedArrayBuffer))) return undefined;
    // The activation, as stored, where every thread reads it.
    const data = src.data;
    const shared = new Uint8Array(new SharedArrayBuffer(data.byteLength));
    runCopier(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), shared)(0, 0, data.byteLength);
    const sharedSrc: SampleRows = { ...src, data: src.half ? new Uint16Array(shared.buffer) : new Float32Array(shared.buffer) };
    const bounds = rowBounds(n, this.threads);
    const parts = bounds.slice(1).map((i1, t) => this.submit({ kind: "rows", ...(target.sample ? { sample: target.sample } : {}), sum: target.sum, src: sharedSrc, i0: bounds[t]!, i1 }, pooled * rowsWork(n, bounds[t]!, i1), []));
    return Promise.all(parts).then(() => undefined);
  }

  async density(rows: TokenRows, visual: Uint8Array): Promise<Density> {
    const r = await this.submit({ kind: "density", rows, visual }, (rows.tokens * rows.tokens * rows.dim) / 2, transferable(rows));
    if (r.kind !== "density") throw new RuntimeError("solve pool", `a density task answered ${r.kind}`);
    return r.density;
  }

  async amia(rows: TokenRows, attention: Float64Array, visual: Uint8Array): Promise<AmiaSelection> {
    const r = await this.submit({ kind: "amia", rows, attention, visual }, 2 * rows.tokens * rows.tokens * rows.dim, transferable(rows));
    if (r.kind !== "amia") throw new RuntimeError("solve pool", `an amia task answered ${r.kind}`);
    return r.selection;
  }

  /** Stops the threads; tasks not answered yet fail, later ones are refused. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fail(new RuntimeError("solve pool", "was closed while solving"));
    await Promise.all((this.workers ?? []).map((w) => w.terminate()));
  }

  private submit(task: SolveTask, cost: number, transfer: ArrayBuffer[]): Promise<SolveResult> {
    if (this.closed) return Promise.reject(new RuntimeError("solve pool", "is closed"));
    if (this.failure) return Promise.reject(this.failure);
    this.workers ??= this.startThreads();
    return new Promise<SolveResult>((resolve, reject) => {
      this.queue.push({ task, cost, seq: this.seq++, transfer, resolve, reject });
      // Tasks submitted in one turn (a block's factorizations) are ranked together before any starts.
      this.dispatchAfterTurn();
    });
  }

  private dispatchAfterTurn(): void {
    if (this.dispatchSoon) return;
    this.dispatchSoon = true;
    setImmediate(() => {
      this.dispatchSoon = false;
      this.dispatch();
    });
  }

  private startThreads(): Worker[] {
    const workers = Array.from({ length: this.threads }, (_, t) => {
      const w = new Worker(new URL("./solveThread.js", import.meta.url));
      w.on("message", (res: SolveResponse) => this.answered(t, res));
      w.on("error", (err) => this.fail(err));
      w.on("exit", (code) => {
        if (!this.closed) this.fail(new RuntimeError("solve thread", `exited with code ${code}`));
      });
      // An idle thread must not keep the process alive; one with a task is referenced (dispatch).
      w.unref();
      this.idle.push(t);
      return w;
    });
    return workers;
  }

  private dispatch(): void {
    while (this.idle.length > 0 && this.queue.length > 0 && !this.failure) {
      let best = 0;
      for (let i = 1; i < this.queue.length; i++) {
        const q = this.queue[i]!;
        const b = this.queue[best]!;
        if (q.cost > b.cost || (q.cost === b.cost && q.seq < b.seq)) best = i;
      }
      const next = this.queue.splice(best, 1)[0]!;
      if (next.task.kind === "factor" && this.idle.length > 1 && next.task.n >= solvePoolLimits.teamInputs) {
        this.startTeam(next, next.task, this.idle.splice(0));
        continue;
      }
      const thread = this.idle.shift()!;
      const id = this.nextId++;
      this.running.set(id, { ...next, thread });
      const w = this.workers![thread]!;
      w.ref();
      w.postMessage({ id, task: next.task } satisfies SolveRequest, next.transfer);
    }
  }

  /** `task` on every thread of `threads` at once, its working space and U shared. */
  private startTeam(job: Queued, task: FactorTask, threads: number[]): void {
    const size = threads.length;
    const square = () => new Float64Array(new SharedArrayBuffer(task.n * task.n * 8));
    // The working space in the Cholesky kernel's memory where it can run.
    const memory = choleskyMemory(task.n, size);
    const space = memory ? { memory } : { a: square() };
    const [u, control] = [square(), teamControl()];
    const key = `${task.n}/${size}`;
    const split = this.splits.get(key) ?? evenSplit(size);
    const team: TeamRun = { left: size, control, key, split, inverseMs: [], productMs: [] };
    threads.forEach((thread, rank) => {
      const id = this.nextId++;
      this.running.set(id, { ...job, thread, team, rank });
      const w = this.workers![thread]!;
      w.ref();
      w.postMessage({ id, task: { ...task, kind: "factorTeam", rank, size, ...space, u, control, split } } satisfies SolveRequest);
    });
  }

  private answered(thread: number, res: SolveResponse): void {
    const job = this.running.get(res.id);
    if (!job) return;
    this.running.delete(res.id);
    this.workers![thread]!.unref();
    this.idle.push(thread);
    const team = job.team;
    if (!team) {
      if (res.ok) job.resolve(res.result);
      else job.reject(rebuild(res.error));
    } else {
      if (res.ok) {
        team.result ??= res.result;
        const ms = res.result.kind === "factor" ? res.result.phaseMs : undefined;
        if (ms) [team.inverseMs[job.rank!], team.productMs[job.rank!]] = ms;
      }
      // The member that failed, not those it stopped.
      else if (!team.error || isTeamAbort(team.error)) team.error = rebuild(res.error);
      if (--team.left === 0) {
        if (team.error) job.reject(team.error);
        else {
          this.splits.set(team.key, { inverse: balancedShares(team.split.inverse, team.inverseMs), product: balancedShares(team.split.product, team.productMs) });
          job.resolve(team.result!);
        }
      }
    }
    // After the engine's reactions to this answer (an input factored queues its updates), so
    // that the costliest of them can be the next task.
    this.dispatchAfterTurn();
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const job of this.running.values()) if (job.team) abortTeam(job.team.control);
    for (const job of [...this.running.values(), ...this.queue]) job.reject(this.failure);
    this.running.clear();
    this.queue.length = 0;
  }
}

/**
 * `a` in shared memory, where threads read it without a copy each: H accumulates there
 * (HessianAccumulator) and U is factored there, so only an H or U from elsewhere is copied.
 */
function shared(a: Float64Array): Float64Array {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const out = new Float64Array(new SharedArrayBuffer(a.length * 8));
  for (let i = 0; i < a.length; i++) out[i] = a[i]!;
  return out;
}

/** The rows' own buffer, moved to the thread where nothing else views it (else they are copied). */
function transferable(rows: TokenRows): ArrayBuffer[] {
  const d = rows.data;
  return d instanceof Float64Array && d.buffer instanceof ArrayBuffer && d.byteOffset === 0 && d.byteLength === d.buffer.byteLength ? [d.buffer] : [];
}

/** Entries of rows [i0, i1) of an n×n upper triangle. */
function rowsWork(n: number, i0: number, i1: number): number {
  return (i1 - i0) * n - (i1 * (i1 - 1) - i0 * (i0 - 1)) / 2;
}

/**
 * [0, b1, ..., n]: `parts` ranges of rows of the upper triangle with about equal entries, each
 * starting at an even row (addSampleRows takes rows in pairs); empty ranges dropped.
 */
export function rowBounds(n: number, parts: number): number[] {
  const total = rowsWork(n, 0, n);
  const bounds = [0];
  for (let p = 1; p < parts; p++) {
    const goal = (total * p) / parts;
    // The even row after the last bound whose prefix of entries comes closest to the goal.
    let best = -1;
    for (let i = bounds.at(-1)! + 2; i < n; i += 2) {
      if (best < 0 || Math.abs(rowsWork(n, 0, i) - goal) < Math.abs(rowsWork(n, 0, best) - goal)) best = i;
      if (rowsWork(n, 0, i) > goal) break;
    }
    if (best > 0) bounds.push(best);
  }
  bounds.push(n);
  return bounds;
}

/** A thread's failure as the class the one-thread solve would have thrown. */
function rebuild(e: SolveFailure): TypedError {
  if (e.code === "NUMERIC") return new NumericError(e.subject, e.message);
  if (e.code === "INVALID_ARGUMENT") return new InvalidArgumentError(e.subject, e.message);
  return new RuntimeError(e.subject || "solve thread", e.message);
}
