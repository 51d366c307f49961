/**
 * TAMP's AMIA token subset for one linear and one sample (METHODS.md §3 AMIA steps 2-5;
 * G-JWLee/TAMP wanda_pruner.py:90-165): tokens the last token attends to, spread over the
 * linear's output space by a greedy pick with neighbour suppression, until the picked set's MMD
 * to all tokens falls below 0.1·√(1 − ρ).
 */
import { densityOf, densityRho, normalizeRows, type TokenRows } from "./tampDensity.js";

/** knn(t): the 3 nearest tokens by ascending distance after dropping the first (the token itself). */
const NEIGHBOURS = 3;

export interface AmiaSelection {
  /** token indices (into the rows) in the order the greedy loop picked them */
  order: number[];
  /** 1 for the selected tokens */
  selected: Uint8Array;
  /** the sample's density ρ = (v + l + vl)/3 (NaN when a modality has no valid pair) */
  rho: number;
}

/**
 * @param rows the linear's output rows on the sample's attended tokens
 * @param attention a[t]: the last attended token's softmax probabilities, averaged over heads
 * @param visual 1 for an image token
 */
export function amiaSelect(rows: TokenRows, attention: ArrayLike<number>, visual: ArrayLike<number>): AmiaSelection {
  const o = normalizeRows(rows);
  const rho = densityRho(densityOf(o, rows.dim, visual));
  return { ...amiaGreedy(o, rows.tokens, rows.dim, attention, rho), rho };
}

/** Steps 3-5 on L2-normalised rows with ρ given. */
export function amiaGreedy(o: Float64Array, tokens: number, dim: number, attention: ArrayLike<number>, rho: number): { order: number[]; selected: Uint8Array } {
  const T = tokens;
  if (attention.length !== T) throw new RangeError(`attention has ${attention.length} entries for ${T} tokens`);
  const dist = new Float64Array(T * T);
  const kernel = new Float64Array(T * T);
  for (let t = 0; t < T; t++) {
    for (let u = 0; u < T; u++) {
      let dot = 0;
      let sq = 0;
      for (let c = 0; c < dim; c++) {
        const a = o[t * dim + c]!;
        const b = o[u * dim + c]!;
        dot += a * b;
        sq += (a - b) ** 2;
      }
      dist[t * T + u] = 1 - dot;
      kernel[t * T + u] = Math.exp(-sq / 2);
    }
  }
  // Ascending distance, ties by index (a stable sort), then the first entry dropped.
  const knn: number[][] = [];
  for (let t = 0; t < T; t++) {
    const byDist = Array.from({ length: T }, (_, u) => u).sort((a, b) => dist[t * T + a]! - dist[t * T + b]! || a - b);
    knn.push(byDist.slice(1, 1 + NEIGHBOURS));
  }
  const g = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    let v = attention[t]!;
    for (const u of knn[t]!) v += Math.exp(-dist[t * T + u]!) * attention[u]!;
    g[t] = v;
  }
  let meanAll = 0;
  for (let i = 0; i < T * T; i++) meanAll += kernel[i]!;
  meanAll /= T * T;
  const threshold = 0.1 * Math.sqrt(1 - rho);

  const selected = new Uint8Array(T);
  const order: number[] = [];
  // Also stops once every token is picked: with a NaN ρ the official loop would never end.
  while (order.length < T) {
    let best = 0;
    for (let t = 1; t < T; t++) if (g[t]! > g[best]!) best = t;
    const push = Math.max(g[best]!, 0);
    for (const u of knn[best]!) g[u] = g[u]! - Math.exp(-0.2 * dist[best * T + u]!) * push;
    selected[best] = 1;
    order.push(best);
    let low = Infinity;
    for (let t = 0; t < T; t++) low = Math.min(low, g[t]!);
    for (const t of order) g[t] = low - 1;
    if (mmdSquared(kernel, T, meanAll, order) < threshold) break;
  }
  return { order, selected };
}

/** MMD² = mean K + mean K[S,S] − 2·mean K[:,S]. */
function mmdSquared(kernel: Float64Array, T: number, meanAll: number, s: readonly number[]): number {
  let ss = 0;
  for (const a of s) for (const b of s) ss += kernel[a * T + b]!;
  let cross = 0;
  for (let t = 0; t < T; t++) for (const b of s) cross += kernel[t * T + b]!;
  return meanAll + ss / (s.length * s.length) - 2 * cross / (T * s.length);
}
