/**
 * TAMP's DAS allocation (METHODS.md §3 step 3) by hand, float32 as the official tensors, with the
 * overshoot branch that adds where it means to subtract.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { tampAllocate } from "../../services/core/src/prune/tampAllocation.js";

const f = Math.fround;

describe("TAMP allocation", () => {
  test("kept budget in proportion to the score, at least 1 - s_max each", () => {
    // n = [100, 100, 200], scores [1, 2, 1], S = 0.5, s_max = 0.6: total = int(400·0.5) = 200.
    // keep = ceil(fl32(n·fl32(0.4))) = [40, 40, 80] (Σ 160 < 200); Σscore = 4, rest = 40:
    // add = ceil(score/4·40) = [10, 20, 10] → keep = [50, 60, 90], Σ = 200: done.
    const { keep, sparsity } = tampAllocate([100, 100, 200], [1, 2, 1], 0.5, 0.6);
    assert.deepEqual(keep, [50, 60, 90]);
    // s = fl32(1 − fl32(keep/n)): 0.5, 1 − fl32(0.6), 1 − fl32(0.45).
    assert.deepEqual(sparsity, [0.5, f(1 - f(0.6)), f(1 - f(0.45))]);
    assert.equal(sparsity[1], 0.3999999761581421);
  });

  test("overshoot: the excess is added to the largest linear, as the official line 577 does", () => {
    // n = [100, 100, 110], equal scores, S = 0.5, s_max = 0.6: total = int(310·0.5) = 155.
    // keep = [40, 40, 44] (Σ 124); rest = 31, add = ceil(fl32(fl32(1/3)·31)) = ceil(10.33) = 11 each
    // → keep = [51, 51, 55], Σ 157 > 155: need = 2. Largest first (55, index 2):
    // can = min(2, 55 − trunc(110·0.4) = 11) = 2, and keep[2] += 2 → 57 (meant: 53). Σ = 159.
    const { keep, sparsity } = tampAllocate([100, 100, 110], [1, 1, 1], 0.5, 0.6);
    assert.deepEqual(keep, [51, 51, 57]);
    assert.deepEqual(sparsity, [f(1 - f(51 / 100)), f(1 - f(51 / 100)), f(1 - f(57 / 110))]);
  });

  test("a linear whose share reaches n stops taking more (its score is zeroed) and is capped at n", () => {
    // n = [10, 1000], scores [100, 1], S = 0.5, s_max = 0.9: total = 505; keep = [1, 100] (Σ 101).
    // Iteration 1: rest 404, add = [ceil(fl32(100/101)·404), ceil(fl32(1/101)·404)] = [400, 4]
    //   → keep [401, 104] → linear 0 is full: score 0, keep capped at 10 → [10, 104] (Σ 114).
    // Iteration 2: Σscore = 1, rest 391, add = [0, 391] → [10, 495] = 505: done.
    const { keep, sparsity } = tampAllocate([10, 1000], [100, 1], 0.5, 0.9);
    assert.deepEqual(keep, [10, 495]);
    assert.equal(sparsity[0], 0);
  });
});
