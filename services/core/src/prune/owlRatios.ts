/**
 * OWL's layerwise sparsities (METHODS.md §2, luuyin/OWL lib/prune_all.py:139-154, 943-966,
 * 1054-1058): the outlier ratio of each block from Wanda's metric on the dense model, and its
 * normalisation into per-block sparsities with mean S and spread 2λ. Float64 in the official
 * order, with numpy's pairwise summation for the mean, because int(in·s_l) depends on the last
 * ulp of s_l.
 */
import { InvalidArgumentError } from "../errors.js";
import type { WeightMatrix } from "./maskSelect.js";
import { readWeights } from "./sparseGpt.js";

export const OWL_DEFAULT_LAMBDA = 0.08;
export const OWL_DEFAULT_M = 5;

/**
 * r = 100·#{m > M·mean(m)} / #m over the concatenated metrics |B|·√s of the block's linears
 * (every weight counts once, one mean per block, strict >).
 */
export function owlOutlierRatio(linears: readonly { weight: WeightMatrix; scale: Float64Array }[], m: number): number {
  let total = 0;
  let count = 0;
  const metrics: Float64Array[] = [];
  for (const { weight, scale } of linears) {
    if (scale.length !== weight.inDim) throw new InvalidArgumentError(weight.name, `scale has ${scale.length} entries, the layer has ${weight.inDim} input channels`);
    const b = readWeights(weight);
    const out = weight.outDim;
    for (let c = 0; c < weight.inDim; c++) {
      const sq = Math.sqrt(scale[c]!);
      for (let o = 0; o < out; o++) b[c * out + o] = Math.abs(b[c * out + o]!) * sq;
    }
    metrics.push(b);
    for (let i = 0; i < b.length; i++) total += b[i]!;
    count += b.length;
  }
  if (count === 0) return 0;
  const threshold = (total / count) * m;
  let outliers = 0;
  for (const b of metrics) for (let i = 0; i < b.length; i++) if (b[i]! > threshold) outliers++;
  return (outliers / count) * 100;
}

/**
 * s_l from the block ratios r_l and the job's sparsity S:
 *   a = (r − min r)·(1/(max r − min r)·λ·2);  a = a − mean(a) + (1 − S);  s = 1 − a, ≤ 0 → 0.01.
 * All ratios equal (the official code divides by zero there): every block gets S.
 */
export function owlBlockSparsities(ratios: readonly number[], lambda: number, sparsity: number): number[] {
  if (ratios.length === 0) return [];
  let min = ratios[0]!;
  let max = ratios[0]!;
  for (const r of ratios) { if (r < min) min = r; if (r > max) max = r; }
  if (max === min) return ratios.map(() => sparsity);
  const factor = ((1 / (max - min)) * lambda) * 2;
  const a = Float64Array.from(ratios, (r) => (r - min) * factor);
  const mean = numpySum(a) / a.length;
  const keep = 1 - sparsity;
  return Array.from(a, (v) => {
    const s = 1 - (v - mean + keep);
    return s <= 0 ? 0.01 : s;
  });
}

/** numpy's float64 add.reduce: pairwise summation in blocks of 8 accumulators, up to 128 per leaf. */
export function numpySum(a: Float64Array, start = 0, n = a.length): number {
  if (n < 8) {
    let res = 0;
    for (let i = 0; i < n; i++) res += a[start + i]!;
    return res;
  }
  if (n <= 128) {
    const r = [0, 1, 2, 3, 4, 5, 6, 7].map((j) => a[start + j]!);
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j]! += a[start + i + j]!;
    let res = ((r[0]! + r[1]!) + (r[2]! + r[3]!)) + ((r[4]! + r[5]!) + (r[6]! + r[7]!));
    for (; i < n; i++) res += a[start + i]!;
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return numpySum(a, start, n2) + numpySum(a, start + n2, n - n2);
}
