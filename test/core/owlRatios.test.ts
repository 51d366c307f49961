/**
 * OWL's block ratios and their normalisation (METHODS.md §2), by hand. λ = 0.5 keeps every
 * intermediate a binary fraction, so the expected sparsities are exact.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { owlBlockSparsities, owlOutlierRatio, numpySum } from "../../services/core/src/prune/owlRatios.js";
import { OnnxDataType } from "../../services/core/src/onnx/dtype.js";
import type { WeightMatrix } from "../../services/core/src/prune/maskSelect.js";

function weight(rows: number[][], name = "w"): WeightMatrix {
  const v = Float32Array.from(rows.flat());
  return { name, dataType: OnnxDataType.FLOAT, layout: "in_out", inDim: rows.length, outDim: rows[0]!.length, bytes: new Uint8Array(v.buffer) };
}

describe("OWL normalisation", () => {
  test("ties get identical sparsities; the mean is S; s <= 0 becomes 0.01", () => {
    // r = [2, 4, 4, 10], λ = 0.5, S = 0.5: factor = 1/(10-2)·0.5·2 = 0.125,
    // a = (r − 2)·0.125 = [0, 0.25, 0.25, 1], mean(a) = 0.375,
    // a − 0.375 + 0.5 = [0.125, 0.375, 0.375, 1.125], s = 1 − a = [0.875, 0.625, 0.625, −0.125 → 0.01].
    assert.deepEqual(owlBlockSparsities([2, 4, 4, 10], 0.5, 0.5), [0.875, 0.625, 0.625, 0.01]);
  });

  test("more outliers, lower sparsity; spread 2λ around S", () => {
    // r = [2, 4, 4, 10], λ = 0.08, S = 0.5: a = [0, 0.04, 0.04, 0.16], mean 0.06,
    // s = [0.56, 0.52, 0.52, 0.40] up to the last ulp, computed in the official order.
    const s = owlBlockSparsities([2, 4, 4, 10], 0.08, 0.5);
    const f = ((1 / 8) * 0.08) * 2;
    const a = [0, 2 * f, 2 * f, 8 * f];
    const mean = (((0 + a[0]!) + a[1]!) + a[2]! + a[3]!) / 4;
    assert.deepEqual(s, a.map((v) => 1 - (v - mean + (1 - 0.5))));
    assert.equal(s[1], s[2]);
    [0.56, 0.52, 0.52, 0.4].forEach((x, i) => assert.ok(Math.abs(s[i]! - x) < 1e-15));
  });

  test("all ratios equal: uniform S (the official code would divide by zero)", () => {
    assert.deepEqual(owlBlockSparsities([3, 3, 3], 0.08, 0.6), [0.6, 0.6, 0.6]);
  });

  test("numpy's pairwise sum: sequential below 8, eight accumulators up to 128", () => {
    const small = Float64Array.from([0.1, 0.2, 0.3]);
    assert.equal(numpySum(small), (0.1 + 0.2) + 0.3);
    // n = 9: r[j] = a[j] for j < 8, ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7)), then + a8 — which is
    // 1e16 + 8 here, where a sequential sum would stay at 1e16 (each + 1 rounds back to even).
    const a = Float64Array.from([1e16, 1, 1, 1, 1, 1, 1, 1, 1]);
    const expected = (((1e16 + 1) + (1 + 1)) + ((1 + 1) + (1 + 1))) + 1;
    assert.equal(expected, 1e16 + 8);
    assert.equal(numpySum(a), expected);
  });
});

describe("OWL outlier ratio", () => {
  test("100·#{m > M·mean}/#m over the block's concatenated metrics |B|·√s", () => {
    // Linear 1: |B|·√s with s = [1, 4]: rows [1, 1]·1 and [1, 50]·2 → 1, 1, 2, 100.
    // Linear 2: 2x1, s = [1, 1]: 1, 0.  All six: mean = 105/6 = 17.5, M = 5 → threshold 87.5:
    // one outlier of six → 16.67%.
    const r = owlOutlierRatio([
      { weight: weight([[1, 1], [1, 50]]), scale: Float64Array.from([1, 4]) },
      { weight: weight([[1], [0]]), scale: Float64Array.from([1, 1]) },
    ], 5);
    assert.equal(r, (1 / 6) * 100);
  });

  test("strict >: a metric equal to M·mean is not an outlier", () => {
    // All equal to 2 with M = 1: threshold = mean = 2, nothing is > 2.
    assert.equal(owlOutlierRatio([{ weight: weight([[2, -2], [2, 2]]), scale: Float64Array.from([1, 1]) }], 1), 0);
  });
});
