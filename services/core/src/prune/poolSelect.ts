/**
 * Which tokens' activations count (DESIGN.md §2 step 2). Wanda: every attended token. ATV: all
 * text tokens plus, per sample, the k_j visual tokens this block changes most, where
 * k_j = min(nVis_j, round(min(1, alpha * cosDistAvg) * nText_j)) adapts to the block.
 */
import type { CalibSample } from "../calib/calibSet.js";

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Every attended token. */
export function attendedPool(sample: CalibSample): Uint8Array {
  return sample.attentionMask.slice();
}

export interface AtvSelection {
  /** mean of d_t over all visual tokens of all samples (0 when there are none) */
  cosDistAvg: number;
  /** visual tokens kept, per sample */
  k: number[];
  nText: number[];
  nVisual: number[];
  /** per sample, 1 for the tokens of the pool */
  pools: Uint8Array[];
}

/**
 * @param distances per sample, d_t = 1 - cos(X[t], Y[t]) for every token (only visual ones are read)
 */
export function selectAtvPools(samples: readonly CalibSample[], distances: readonly Float64Array[], alpha: number): AtvSelection {
  let total = 0;
  let count = 0;
  const visual: number[][] = samples.map((s, j) => {
    const list: number[] = [];
    for (let t = 0; t < s.tokens; t++) {
      if (s.attentionMask[t] && s.imageMask[t]) {
        list.push(t);
        total += distances[j]![t]!;
        count++;
      }
    }
    return list;
  });
  const cosDistAvg = count === 0 ? 0 : total / count;
  const ratio = Math.min(1, alpha * cosDistAvg);
  const k: number[] = [];
  const nText: number[] = [];
  const nVisual: number[] = [];
  const pools = samples.map((s, j) => {
    const pool = new Uint8Array(s.tokens);
    let text = 0;
    for (let t = 0; t < s.tokens; t++) {
      if (s.attentionMask[t] && !s.imageMask[t]) { pool[t] = 1; text++; }
    }
    const vis = visual[j]!;
    const kj = Math.min(vis.length, roundHalfEven(ratio * text));
    const d = distances[j]!;
    // Largest distance first; equal distances keep the lower token index first.
    const ranked = [...vis].sort((a, b) => d[b]! - d[a]! || a - b);
    for (let i = 0; i < kj; i++) pool[ranked[i]!] = 1;
    k.push(kj);
    nText.push(text);
    nVisual.push(vis.length);
    return pool;
  });
  return { cosDistAvg, k, nText, nVisual, pools };
}
