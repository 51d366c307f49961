// ATV's token choice (DESIGN.md §2 step 2), checked on hand-computed cases.
import { test } from "node:test";
import assert from "node:assert/strict";
import type { CalibSample } from "../../services/core/src/calib/calibSet.js";
import { attendedPool, roundHalfEven, selectAtvPools } from "../../services/core/src/prune/poolSelect.js";

function sample(image: number[], attention?: number[]): CalibSample {
  return {
    index: 0, line: 1, tokens: image.length,
    attentionMask: Uint8Array.from(attention ?? image.map(() => 1)),
    imageMask: Uint8Array.from(image),
  };
}

test("round() sends halves to the even neighbour, as Python does", () => {
  assert.deepEqual([0.5, 1.5, 2.5, 3.5, 2.4999, 2.5001, 0].map(roundHalfEven), [0, 2, 2, 4, 2, 3, 0]);
});

test("k_j = min(nVis, round(min(1, alpha*cosDistAvg) * nText)) and the largest distances are kept", () => {
  // Sample 0: tokens t0 t1 (text) t2 t3 t4 t5 (visual) t6 t7 t8 t9 (text): nText 6, nVis 4.
  // Sample 1: t0 (text) t1 t2 (visual) t3 (text): nText 2, nVis 2.
  const s0 = sample([0, 0, 1, 1, 1, 1, 0, 0, 0, 0]);
  const s1 = sample([0, 1, 1, 0]);
  const d0 = Float64Array.from([9, 9, 0.1, 0.7, 0.3, 0.5, 9, 9, 9, 9]); // text distances are ignored
  const d1 = Float64Array.from([9, 0.2, 0.4, 9]);
  // cosDistAvg = (0.1 + 0.7 + 0.3 + 0.5 + 0.2 + 0.4) / 6 = 2.2 / 6 = 0.3667
  // alpha 1: ratio 0.3667; k0 = round(0.3667 * 6) = round(2.2) = 2; k1 = round(0.733) = 1.
  const sel = selectAtvPools([s0, s1], [d0, d1], 1);
  assert.ok(Math.abs(sel.cosDistAvg - 2.2 / 6) < 1e-15);
  assert.deepEqual(sel.k, [2, 1]);
  assert.deepEqual(sel.nText, [6, 2]);
  assert.deepEqual(sel.nVisual, [4, 2]);
  // Sample 0 keeps t3 (0.7) and t5 (0.5); sample 1 keeps t2 (0.4).
  assert.deepEqual([...sel.pools[0]!], [1, 1, 0, 1, 0, 1, 1, 1, 1, 1]);
  assert.deepEqual([...sel.pools[1]!], [1, 0, 1, 1]);
});

test("alpha scales the ratio, capped at 1 and at the number of visual tokens", () => {
  const s0 = sample([0, 0, 1, 1, 1, 1, 0, 0, 0, 0]);
  const d0 = Float64Array.from([0, 0, 0.1, 0.7, 0.3, 0.5, 0, 0, 0, 0]);
  // cosDistAvg = 1.6 / 4 = 0.4. alpha 2: ratio 0.8, round(0.8 * 6) = round(4.8) = 5 > nVis 4 -> 4.
  assert.deepEqual(selectAtvPools([s0], [d0], 2).k, [4]);
  // alpha 10: ratio min(1, 4) = 1 -> round(6) = 6 -> capped to 4.
  assert.deepEqual(selectAtvPools([s0], [d0], 10).k, [4]);
  // alpha 1.25: ratio 0.5, 0.5 * 6 = 3 -> 3 largest: t3, t5, t4.
  const sel = selectAtvPools([s0], [d0], 1.25);
  assert.deepEqual(sel.k, [3]);
  assert.deepEqual([...sel.pools[0]!], [1, 1, 0, 1, 1, 1, 1, 1, 1, 1]);
});

test("alpha 0 keeps no visual token: the pool is exactly the text tokens", () => {
  const s = sample([0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 0]);
  const sel = selectAtvPools([s], [Float64Array.from([0, 0.9, 0.8, 0, 0.7, 0])], 0);
  assert.deepEqual(sel.k, [0]);
  // text = attended and not image: t0, t3 (t5 is padding)
  assert.deepEqual([...sel.pools[0]!], [1, 0, 0, 1, 0, 0]);
});

test("equal distances keep the lower token index first", () => {
  const s = sample([1, 1, 1, 1, 0, 0, 0, 0]);
  // all visual distances equal 0.5 -> cosDistAvg 0.5, k = round(0.5 * 4) = 2 -> t0, t1
  const sel = selectAtvPools([s], [Float64Array.from([0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0])], 1);
  assert.deepEqual(sel.k, [2]);
  assert.deepEqual([...sel.pools[0]!], [1, 1, 0, 0, 1, 1, 1, 1]);
});

test("no visual tokens anywhere: cosDistAvg is 0 and the pool is all text", () => {
  const s = sample([0, 0, 0], [1, 1, 0]);
  const sel = selectAtvPools([s], [new Float64Array(3)], 1);
  assert.equal(sel.cosDistAvg, 0);
  assert.deepEqual(sel.k, [0]);
  assert.deepEqual([...sel.pools[0]!], [1, 1, 0]);
  assert.deepEqual([...attendedPool(s)], [1, 1, 0]);
});

test("padded visual tokens are neither averaged nor selected", () => {
  // t2 is an image token but padding: excluded from cosDistAvg and from the choice.
  const s = sample([0, 1, 1, 0], [1, 1, 0, 1]);
  const sel = selectAtvPools([s], [Float64Array.from([0, 0.5, 100, 0])], 2);
  assert.equal(sel.cosDistAvg, 0.5);
  assert.deepEqual(sel.nVisual, [1]);
  // ratio min(1, 1) = 1, round(1 * 2) = 2 -> capped to 1 visual
  assert.deepEqual([...sel.pools[0]!], [1, 1, 0, 1]);
});
