/**
 * The k-th smallest of many float64 values without sorting them: SparseGPT's slab threshold
 * (METHODS.md §1 step 6.2: the value at sorted position int(numel·s)) over 128 x out scores per
 * slab, where a full sort was a tenth of the whole method's time.
 */

/** Rounds of partitioning before the rest is sorted instead (a guard against bad pivots); tests lower it. */
export const orderStatisticLimits = { rounds: 64 };

/**
 * What `Float64Array.from(a).sort()[k]` is, as a value (the sign of a zero aside: -0 and +0 are
 * equal here, as they are to the `<=` that uses it); NaN is sorted last there and taken here the
 * same way. `a` is reordered. k must be in [0, a.length).
 */
export function kthSmallest(a: Float64Array, k: number): number {
  if (!(Number.isInteger(k) && k >= 0 && k < a.length)) throw new RangeError(`k = ${k} is not a position of ${a.length} values`);
  let end = a.length;
  // NaNs go to the end (as sort puts them): the rest is NaN-free.
  for (let i = 0; i < end; i++) {
    if (Number.isNaN(a[i]!)) {
      end--;
      const t = a[end]!;
      a[end] = a[i]!;
      a[i] = t;
      i--;
    }
  }
  if (k >= end) return NaN;
  let lo = 0;
  let hi = end - 1;
  for (let round = 0; hi > lo; round++) {
    if (round === orderStatisticLimits.rounds) return a.subarray(lo, hi + 1).sort()[k - lo]!;
    const pivot = medianOfThree(a[lo]!, a[(lo + hi) >>> 1]!, a[hi]!);
    // Hoare's partition: [lo, j] <= pivot <= [i, hi], and what lies between equals the pivot.
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return pivot;
  }
  return a[k]!;
}

function medianOfThree(x: number, y: number, z: number): number {
  if (x < y) return y < z ? y : x < z ? z : x;
  return x < z ? x : y < z ? z : y;
}
