/**
 * SparseGPT's statistic as an accumulator: the Hessian of a linear's input over the pooled tokens
 * (prune/hessian.ts), one per activation tensor so q/k/v (and gate/up) share one in×in matrix.
 * Replicas of a stage exchange each sample's own A_jᵀA_j (its record) and reduce them in sample
 * order (pipeline/sampleExchange.ts).
 */
import type { LinearInfo } from "../graph/linears.js";
import { HessianAccumulator, type SampleRowsSolver } from "../prune/hessian.js";
import { prepareHessian, type PreparedHessian } from "../prune/sparseGpt.js";
import type { Solver } from "../prune/solvePool.js";
import type { AccumulatorInput, AccumulatorSpec, SummingAccumulator } from "./method.js";

export class Hessian implements SummingAccumulator {
  private readonly acc: HessianAccumulator;
  private finished: Float64Array | undefined;
  private prepared: PreparedHessian | undefined;
  private preparing: Promise<PreparedHessian> | undefined;
  private last: number | undefined;

  constructor(tensor: string, channels: number) {
    this.acc = new HessianAccumulator(tensor, channels);
  }

  add({ index, input, pool, subject, solver }: AccumulatorInput): void | Promise<void> {
    if (this.finished) throw new RangeError(`Hessian of ${this.acc.tensor} was already finished`);
    const added = this.acc.add(input, pool, subject, solver?.addSampleRows ? (solver as SampleRowsSolver) : undefined);
    this.last = index;
    return added;
  }

  keepRecords(): void {
    this.acc.keepRecords();
  }

  record(j: number): Float64Array {
    if (this.last !== j) throw new RangeError(`Hessian of ${this.acc.tensor}: the last sample added is ${this.last ?? "none"}, not ${j}`);
    return this.acc.record();
  }

  reduce(records: readonly Float64Array[]): void {
    if (this.finished) throw new RangeError(`Hessian of ${this.acc.tensor} was already finished`);
    this.acc.reduce(records);
    this.last = undefined;
  }

  sum(): Float64Array {
    if (this.finished) throw new RangeError(`Hessian of ${this.acc.tensor} was already finished`);
    return this.acc.packedSum();
  }

  continueSum(prefix: Float64Array, records: readonly Float64Array[]): void {
    if (this.finished) throw new RangeError(`Hessian of ${this.acc.tensor} was already finished`);
    this.acc.continueSum(prefix, records);
    this.last = undefined;
  }

  /** H = (2/N)·Σ AᵀA, formed once for the linears sharing it (they only read it). */
  matrix(samples: number): Float64Array {
    this.finished ??= this.acc.finish(samples);
    return this.finished;
  }

  /** H with dead inputs, dampening and U = chol(H⁻¹)ᵀ, factored once for the linears sharing it. */
  factored(samples: number): PreparedHessian {
    this.prepared ??= prepareHessian(this.matrix(samples), this.acc.channels, this.acc.tensor);
    return this.prepared;
  }

  /** factored(), by `solver` (on a solve thread with a SolvePool): once, whichever linear asks first. */
  factoredBy(solver: Solver, samples: number): Promise<PreparedHessian> {
    if (this.prepared) return Promise.resolve(this.prepared);
    this.preparing ??= solver.factor(this.matrix(samples), this.acc.channels, this.acc.tensor);
    return this.preparing;
  }
}

export function hessians(linear: LinearInfo): AccumulatorSpec<Hessian> {
  const n = linear.inDim;
  // The Hessian, then its factor U and the dead-input flags.
  const bytes = HessianAccumulator.bytes(n) + 8 * n * n + n;
  return { key: `hessian:${linear.activation}`, bytes, create: () => new Hessian(linear.activation, n) };
}
