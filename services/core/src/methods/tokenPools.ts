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
      // By sample: a replica observes its own samples and accepts the others' distances.
      const distances: (Float64Array | undefined)[] = new Array(samples.length);
      const known = (j: number) => {
        const d = distances[j];
        if (!d) throw new RangeError(`sample ${j} was not observed`);
        return d;
      };
      return {
        observe(j, { sample: s, x, y, distances: inGraph, subject }) {
          // d_t = 1 - cos(X[t], Y[t]) for the visual tokens (measured by the graph with --stats graph).
          const visual = s.attentionMask.map((m, t) => (m && s.imageMask[t] ? 1 : 0));
          distances[j] = inGraph ? checkedDistances(inGraph, s.tokens, visual, subject) : cosineDistances(x, y, s.tokens, visual, subject);
        },
        record: known,
        accept(j, record) {
          if (record.length !== samples[j]!.tokens) throw new RangeError(`sample ${j}: got ${record.length} distances for ${samples[j]!.tokens} tokens`);
          distances[j] = record;
        },
        select() {
          const { pools, ...facts } = selectAtvPools(samples, samples.map((_, j) => known(j)), alpha);
          return { pools, facts };
        },
      };
    },
  };
}
