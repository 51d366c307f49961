/**
 * The two token-pool rules of DESIGN.md §2 step 2, as the methods declare them: every attended
 * token (Wanda, SparseGPT), or ATV's text tokens plus the k_j visual tokens the block changes
 * most (ATV, ATV-SparseGPT). The selection itself lives in prune/poolSelect.ts.
 */
import type { CalibSample } from "../calib/calibSet.js";
import { checkedDistances, cosineDistances } from "../prune/hiddenState.js";
import { attendedPool, selectAtvPools } from "../prune/poolSelect.js";
import type { PoolRule } from "./method.js";

export const ATTENDED_TOKENS: PoolRule = { kind: "fixed", pool: attendedPool };

export function atvTokens(alpha: number): PoolRule {
  return {
    kind: "afterForward",
    start(samples: readonly CalibSample[]) {
      const distances: Float64Array[] = [];
      return {
        observe(j, { sample: s, x, y, distances: inGraph, subject }) {
          if (j !== distances.length) throw new RangeError(`sample ${j} observed out of order (expected ${distances.length})`);
          // d_t = 1 - cos(X[t], Y[t]) for the visual tokens (measured by the graph with --stats graph).
          const visual = s.attentionMask.map((m, t) => (m && s.imageMask[t] ? 1 : 0));
          distances.push(inGraph ? checkedDistances(inGraph, s.tokens, visual, subject) : cosineDistances(x, y, s.tokens, visual, subject));
        },
        select() {
          const { pools, ...facts } = selectAtvPools(samples, distances, alpha);
          return { pools, facts };
        },
      };
    },
  };
}
