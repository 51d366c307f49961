/**
 * OWL (METHODS.md §2): per-block sparsities from each block's share of outlier weights on the
 * dense model. The pre-pass feeds Wanda's statistic over every attended token whatever the
 * method (the official wanda_owl, sparsegpt_owl and magnitude_owl all do), so atv+owl and
 * wanda+owl get the same targets; each block contributes one number, its outlier ratio r_l.
 */
import { InvalidArgumentError } from "../errors.js";
import { ChannelSquares, channelSquares } from "../methods/channelSquares.js";
import { ATTENDED_TOKENS } from "../methods/tokenPools.js";
import { OWL_DEFAULT_LAMBDA, OWL_DEFAULT_M, owlBlockSparsities, owlOutlierRatio } from "../prune/owlRatios.js";
import type { Pattern } from "../prune/maskSelect.js";
import type { ProfilePrePass, SparsityProfile } from "./sparsityProfile.js";

export interface OwlOptions {
  lambda?: number;
  m?: number;
  pattern: Pattern;
}

export function owlProfile({ lambda = OWL_DEFAULT_LAMBDA, m = OWL_DEFAULT_M, pattern }: OwlOptions): SparsityProfile {
  if (!(Number.isFinite(lambda) && lambda >= 0)) throw new InvalidArgumentError("owlLambda", `must be a finite number >= 0, got ${lambda}`);
  if (!(Number.isFinite(m) && m > 0)) throw new InvalidArgumentError("owlM", `must be a finite number > 0, got ${m}`);
  if (pattern.kind !== "unstructured") {
    // The official wanda_owl ignores the profile for N:M; OWL's N:M method is another algorithm.
    throw new InvalidArgumentError("sparsityProfile", `owl is for unstructured pruning; with the ${pattern.n}:${pattern.m} pattern use --sparsity-profile uniform`);
  }
  const prePass: ProfilePrePass<ChannelSquares> = {
    pool: ATTENDED_TOKENS,
    accumulator: channelSquares,
    blockFacts: ({ linears, weights, stats, samples }) => [
      owlOutlierRatio(linears.map((l) => ({ weight: weights.get(l.weight)!, scale: stats.get(l.weight)!.mean(samples) })), m),
    ],
  };
  return {
    name: "owl",
    options: { owlLambda: lambda, owlM: m },
    prePass,
    targets({ sparsity, linears, facts }) {
      const perBlock = owlBlockSparsities(facts.map((f) => f[0]!), lambda, sparsity);
      const targets = new Map<string, number>();
      linears.forEach((block, b) => {
        const s = perBlock[b]!;
        if (!(s < 1)) {
          throw new InvalidArgumentError("owlLambda", `OWL gives block ${b} a sparsity of ${s} (>= 1) at --sparsity ${sparsity}; lower --owl-lambda or --sparsity`);
        }
        for (const l of block) targets.set(l.weight, s);
      });
      return targets;
    },
  };
}
