/** Messages between a SolvePool and its solve threads (solveThread.ts). */
import type { WeightMatrix } from "./maskSelect.js";
import type { SampleRows } from "./hessian.js";
import type { Density, TokenRows } from "./tampDensity.js";
import type { AmiaSelection } from "./amiaSelect.js";
import type { PreparedHessian, SparseGptOptions, SparseGptUpdate } from "./sparseGpt.js";
import type { TeamSplit } from "./solveTeam.js";
import type { CholeskyMemory } from "./choleskyKernelWasm.js";

/**
 * Steps 3-5 of SparseGPT for one input: H (in shared memory: every thread reads it where it is)
 * to U, which the thread allocates in shared memory for the linears that read the same input.
 */
export interface FactorTask {
  kind: "factor";
  hessian: Float64Array;
  n: number;
  subject: string;
  percDamp: number;
}

/**
 * A FactorTask run by a team of threads (solveTeam.ts): member `rank` of `size`, every member
 * given the same shared working space (`a`, or the matrix of `memory`), output `u` (both n×n)
 * and barrier `control`.
 */
export interface FactorTeamTask extends Omit<FactorTask, "kind"> {
  kind: "factorTeam";
  rank: number;
  size: number;
  /** the working space: in `memory` where the Cholesky kernel runs (then this is absent), else plain shared memory */
  a?: Float64Array;
  memory?: CholeskyMemory;
  u: Float64Array;
  control: Int32Array;
  split: TeamSplit;
}

/** Steps 6-7 for one linear: its weight (a copy of its own, moved here) pruned and updated in place. */
export interface UpdateTask {
  kind: "update";
  weight: WeightMatrix;
  prepared: PreparedHessian;
  options: SparseGptOptions;
}

/** tr(BᵀHB) of one linear's dense weight (a copy, moved here), H shared. */
export interface EnergyTask {
  kind: "energy";
  weight: WeightMatrix;
  hessian: Float64Array;
}

/**
 * Rows [i0, i1) of one sample's P and of Σ += P (hessian.ts addSampleRows), all in shared memory;
 * without `sample` (no record kept), P's rows a chunk at a time in the thread's own scratch.
 */
export interface RowsTask {
  kind: "rows";
  sample?: Float64Array;
  sum: Float64Array;
  src: SampleRows;
  i0: number;
  i1: number;
}

/** TAMP's density of one linear's output on one sample (tampDensity.ts densityOf). */
export interface DensityTask {
  kind: "density";
  rows: TokenRows;
  visual: Uint8Array;
}

/** TAMP's AMIA token subset of one linear on one sample (amiaSelect.ts). */
export interface AmiaTask {
  kind: "amia";
  rows: TokenRows;
  attention: Float64Array;
  visual: Uint8Array;
}

export type SolveTask = FactorTask | FactorTeamTask | UpdateTask | EnergyTask | RowsTask | DensityTask | AmiaTask;

export interface SolveRequest {
  id: number;
  task: SolveTask;
}

/** An AtvpError as it crosses threads: rebuilt as its own class from the code. */
export interface SolveFailure {
  code: string;
  subject: string;
  /** the message without the subject prefix */
  message: string;
}

export type SolveResult =
  | { kind: "factor"; u: Float64Array; dead: Uint8Array; /** a team member's milliseconds in L⁻¹ and H⁻¹ */ phaseMs?: [number, number] }
  | { kind: "update"; bytes: Uint8Array; update: SparseGptUpdate }
  | { kind: "energy"; energy: number }
  | { kind: "rows" }
  | { kind: "density"; density: Density }
  | { kind: "amia"; selection: AmiaSelection };

export type SolveResponse = { id: number } & ({ ok: true; result: SolveResult } | { ok: false; error: SolveFailure });
