/**
 * kthSmallest (SparseGPT's slab threshold) against a sorted copy, at every position of small
 * arrays and at random positions of large ones: ties, runs already in order or reversed, all
 * equal, zeros of both signs, infinities and NaN (sorted last); and with the partition rounds cut
 * to nothing, where the sort takes over.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { kthSmallest, orderStatisticLimits } from "../../services/core/src/prune/orderStatistic.js";
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";

/** sort()[k], with -0 read as +0 (kthSmallest does not tell them apart, nor does the threshold's <=). */
function expected(values: Float64Array, k: number): number {
  const v = values.slice().sort()[k]!;
  return v === 0 ? 0 : v;
}

function check(values: Float64Array, k: number, label: string): void {
  const got = kthSmallest(values.slice(), k);
  assert.ok(Object.is(got === 0 ? 0 : got, expected(values, k)), `${label}, k = ${k}: got ${got}, sorted ${expected(values, k)}`);
}

describe("kthSmallest", () => {
  const rand = mulberry32(5150);
  const shapes: Record<string, (n: number) => Float64Array> = {
    ties: (n) => Float64Array.from({ length: n }, () => Math.floor(rand() * 4)),
    spread: (n) => Float64Array.from({ length: n }, () => rand() * rand() * 100),
    sorted: (n) => Float64Array.from({ length: n }, (_, i) => i),
    reversed: (n) => Float64Array.from({ length: n }, (_, i) => n - i),
    equal: (n) => new Float64Array(n).fill(2.5),
    organ: (n) => Float64Array.from({ length: n }, (_, i) => Math.min(i, n - i)),
    special: (n) => Float64Array.from({ length: n }, () => [0, -0, Infinity, -Infinity, NaN, 1, 1e-300, 5][Math.floor(rand() * 8)]!),
  };

  test("every position of arrays of 1 to 40 values", () => {
    for (const [name, make] of Object.entries(shapes)) {
      for (let n = 1; n <= 40; n++) {
        const values = make(n);
        for (let k = 0; k < n; k++) check(values, k, `${name} of ${n}`);
      }
    }
  });

  test("random positions of 100,000 values, and the ends", () => {
    for (const [name, make] of Object.entries(shapes)) {
      const values = make(100_000);
      for (const k of [0, 99_999, 50_000, ...Array.from({ length: 6 }, () => Math.floor(rand() * 100_000))]) check(values, k, name);
    }
  });

  test("by hand: [3, NaN, 1, 2, 1]: 1, 1, 2, 3, then NaN", () => {
    const v = Float64Array.of(3, NaN, 1, 2, 1);
    assert.deepEqual([0, 1, 2, 3, 4].map((k) => kthSmallest(v.slice(), k)), [1, 1, 2, 3, NaN]);
  });

  test("with the partition rounds cut to 0 or 1 the sort takes over: the same values", () => {
    const saved = orderStatisticLimits.rounds;
    try {
      for (const rounds of [0, 1]) {
        orderStatisticLimits.rounds = rounds;
        for (const [name, make] of Object.entries(shapes)) {
          const values = make(500);
          for (const k of [0, 17, 250, 499]) check(values, k, `${name}, ${rounds} rounds`);
        }
      }
    } finally {
      orderStatisticLimits.rounds = saved;
    }
  });

  test("a position outside the array is a RangeError", () => {
    for (const k of [-1, 3, 1.5, NaN]) assert.throws(() => kthSmallest(Float64Array.of(1, 2, 3), k), RangeError, String(k));
  });
});
