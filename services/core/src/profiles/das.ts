/**
 * TAMP's DAS profile (METHODS.md §3 DAS): a dense pre-pass scores each linear by the diversity of
 * its output tokens, and the kept budget of the model is shared in proportion to the scores
 * (prune/tampAllocation.ts), with no linear above --tamp-max-sparsity. A block's facts are its
 * linears' scores, in the block's linear order; each depends only on that block's dense forward.
 */
import { InvalidArgumentError } from "../errors.js";
import { DasDensity, dasDensity } from "../methods/tampStats.js";
import { ATTENDED_TOKENS } from "../methods/tokenPools.js";
import { tampAllocate } from "../prune/tampAllocation.js";
import type { ProfilePrePass, SparsityProfile } from "./sparsityProfile.js";

export const DAS_PROFILE = "das";

export function dasProfile(maxSparsity: number): SparsityProfile {
  if (!(Number.isFinite(maxSparsity) && maxSparsity > 0 && maxSparsity <= 1)) {
    throw new InvalidArgumentError("tampMaxSparsity", `must be in (0, 1], got ${maxSparsity}`);
  }
  const prePass: ProfilePrePass<DasDensity> = {
    pool: ATTENDED_TOKENS,
    accumulator: dasDensity,
    blockFacts: ({ linears, stats }) => linears.map((l) => stats.get(l.weight)!.das.score()),
  };
  return {
    name: DAS_PROFILE,
    options: { tampMaxSparsity: maxSparsity },
    prePass,
    targets({ sparsity, linears, facts }) {
      const all = linears.flat();
      const scores = facts.flat();
      const { sparsity: s } = tampAllocate(all.map((l) => l.inDim * l.outDim), scores, sparsity, maxSparsity);
      return new Map(all.map((l, i) => [l.weight, s[i]!]));
    },
  };
}
