// s[c] = (1/N) sum_j sum_{t in pool_j} A_j[t,c]^2, float64, from float32 and float16 activations.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChannelStats } from "../../services/core/src/prune/activationStats.js";
import { floatToHalf } from "../../services/core/src/onnx/dtype.js";
import { NumericError } from "../../services/core/src/errors.js";

test("sums squares of pooled tokens only and divides by the number of samples", () => {
  const stats = new ChannelStats("act", 2);
  // sample 0: tokens [1, 2], [3, 4], [5, 6]; pool t0, t2 -> [1+25, 4+36] = [26, 40]
  stats.add({ type: "float32", dims: [1, 3, 2], data: Float32Array.from([1, 2, 3, 4, 5, 6]) }, Uint8Array.from([1, 0, 1]), "s0");
  // sample 1 (fp16): tokens [0.5, -1], [2, 0]; pool t1 -> [4, 0]
  const half = Uint16Array.from([0.5, -1, 2, 0].map(floatToHalf));
  stats.add({ type: "float16", dims: [1, 2, 2], data: half }, Uint8Array.from([0, 1]), "s1");
  assert.deepEqual([...stats.sum], [30, 40]);
  assert.deepEqual([...stats.mean(2)], [15, 20]);
});

test("NaN or Inf in an activation names the tensor and the sample", () => {
  const stats = new ChannelStats("/model/layers.3/mlp/Mul/output_0", 2);
  assert.throws(
    () => stats.add({ type: "float32", dims: [1, 1, 2], data: Float32Array.from([1, NaN]) }, Uint8Array.from([1]), "layers.3, sample 2 (line 3)"),
    (e: unknown) => e instanceof NumericError && /layers\.3\/mlp\/Mul/.test(e.message) && /sample 2/.test(e.message),
  );
});
