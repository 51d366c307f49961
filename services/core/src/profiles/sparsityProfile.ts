/**
 * The seam for sparsity profiles (llm-compressor's `sparsity_profile`): where the job's one
 * --sparsity becomes a target per linear. Uniform gives every linear the job's sparsity; OWL and
 * TAMP's DAS first look at the dense model.
 *
 * A profile with a pre-pass asks for a dense forward of every block with dense propagation
 * (block l+1 sees block l's dense output), feeding the accumulators it declares over the pool it
 * declares. From each block it keeps only a few numbers (`blockFacts`), computed where the block
 * ran (a worker, in a cluster) and small enough to travel in a progress message; `targets` then
 * turns the facts of all blocks into per-linear targets in one place (the pruner, or the
 * coordinator before any block is pruned). The facts of a block must depend only on that block's
 * dense forward, so the targets do not depend on how blocks were spread over workers.
 */
import type { LinearInfo } from "../graph/linears.js";
import type { Accumulator, CalibrationNeeds } from "../methods/method.js";
import type { WeightMatrix } from "../prune/maskSelect.js";

/** Per-linear targets by weight name. */
export type LinearTargets = ReadonlyMap<string, number>;

export interface ProfilePrePass<A extends Accumulator = Accumulator> extends CalibrationNeeds<A> {
  /**
   * The facts one block contributes, from its dense weights and its accumulators (by the
   * linears' weight names) after all N samples.
   */
  blockFacts(input: {
    block: number;
    linears: readonly LinearInfo[];
    weights: ReadonlyMap<string, WeightMatrix>;
    stats: ReadonlyMap<string, A>;
    samples: number;
  }): number[];
}

export interface TargetsInput {
  /** the job's --sparsity (N/M for an N:M pattern) */
  sparsity: number;
  /** the selected linears of each block, in block order */
  linears: readonly (readonly LinearInfo[])[];
  /** blockFacts of every block, in block order (empty without a pre-pass) */
  facts: readonly number[][];
}

export interface SparsityProfile {
  readonly name: string;
  /** the options the job gave it, for report.json (OWL's λ and M) */
  readonly options?: Readonly<Record<string, number>>;
  /** undefined: the targets need no forward */
  readonly prePass: ProfilePrePass | undefined;
  targets(input: TargetsInput): LinearTargets;
}
