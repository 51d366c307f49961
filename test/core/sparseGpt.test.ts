/**
 * SparseGPT (METHODS.md §1) on matrices small enough to work through by hand. The Hessian is
 * chosen so that U (the upper Cholesky factor of H⁻¹) has powers of two in it, so every number
 * below is exact and written out.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { sparseGptCompress, upperCholeskyOfInverse, readWeights } from "../../services/core/src/prune/sparseGpt.js";
import { HessianAccumulator } from "../../services/core/src/prune/hessian.js";
import type { WeightMatrix } from "../../services/core/src/prune/maskSelect.js";
import { OnnxDataType, floatToHalf, halfToFloatTable } from "../../services/core/src/onnx/dtype.js";
import { NumericError } from "../../services/core/src/errors.js";

/**
 * U = [[1, .5, .5, 0], [0, 1, 0, .5], [0, 0, 1, .5], [0, 0, 0, 1]], so
 * U⁻¹ = V = [[1, -.5, -.5, .5], [0, 1, 0, -.5], [0, 0, 1, -.5], [0, 0, 0, 1]] and
 * H = (UᵀU)⁻¹ = V·Vᵀ:
 */
const H = Float64Array.from([
  1.75, -0.75, -0.75, 0.5,
  -0.75, 1.25, 0.25, -0.5,
  -0.75, 0.25, 1.25, -0.5,
  0.5, -0.5, -0.5, 1,
]);
const U = [
  [1, 0.5, 0.5, 0],
  [0, 1, 0, 0.5],
  [0, 0, 1, 0.5],
  [0, 0, 0, 1],
];

/** torch W[out=3, in=4], stored as the ONNX B = Wᵀ[in=4, out=3] (float32, in_out). */
const W = [
  [4, 1, 2, 3],
  [-2, 3, 1, -1],
  [1, -4, 2, 2],
];

function onnxWeight(torchRows: number[][], dataType = OnnxDataType.FLOAT): WeightMatrix {
  const out = torchRows.length;
  const inDim = torchRows[0]!.length;
  const b = new Float32Array(inDim * out);
  for (let o = 0; o < out; o++) for (let c = 0; c < inDim; c++) b[c * out + o] = torchRows[o]![c]!;
  let bytes = new Uint8Array(b.buffer);
  if (dataType === OnnxDataType.FLOAT16) bytes = new Uint8Array(Uint16Array.from(b, (v) => floatToHalf(v)).buffer);
  return { name: "layer", dataType, layout: "in_out", inDim, outDim: out, bytes };
}

/** Back to torch rows W[out][in]. */
function torchRows(w: WeightMatrix): number[][] {
  const b = readWeights(w);
  return Array.from({ length: w.outDim }, (_, o) => Array.from({ length: w.inDim }, (_, c) => b[c * w.outDim + o]!));
}

describe("SparseGPT by hand", () => {
  test("U: cholesky → cholesky_inverse → cholesky(upper) gives back the chosen factor", () => {
    const u = upperCholeskyOfInverse(H.slice(), 4, "layer");
    for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) assert.ok(Math.abs(u[i * 4 + j]! - U[i]![j]!) < 1e-12, `U[${i},${j}] = ${u[i * 4 + j]}`);
  });

  test("3x4 matrix, s = 0.5, slabs of 2 input channels (percdamp 0 to keep the numbers round)", () => {
    // Slab [0,2): U1 = [[1,.5],[0,1]], diag 1, so t = W²: column 0 → 16, 4, 1; column 1 → 1, 9, 16.
    //   numel 6, position int(6·0.5) = 3 of the sorted 1, 1, 4, 9, 16, 16 → θ = 9. t ≤ 9 is pruned:
    //   W[0,1], W[1,0], W[1,1], W[2,0] (4 = 3 + the official +1).
    //   i=0: w = (4,-2,1), q = (4,0,0), err = (0,-2,1); column 1 -= 0.5·err → (1, 4, -4.5).
    //   i=1: w = (1,4,-4.5), q = (0,0,-4.5), err = (1,4,0).
    //   Lazy: W[:,2:4] -= E1·U[0:2,2:4] with E1 = [[0,1],[-2,4],[1,0]], U[0:2,2:4] = [[.5,0],[0,.5]]
    //   → E1·U = [[0,.5],[-1,2],[.5,0]]; W[:,2:4] = [[2,3],[1,-1],[2,2]] - that = [[2,2.5],[2,-3],[1.5,2]].
    // Slab [2,4): t = W²: column 2 → 4, 4, 2.25; column 3 → 6.25, 9, 4. Sorted 2.25, 4, 4, 4, 6.25, 9
    //   → θ = 4: W[0,2], W[1,2], W[2,2], W[2,3] are pruned.
    //   i=2: w = (2,2,1.5), q = 0, err = (2,2,1.5); column 3 -= 0.5·err → (1.5, -4, 1.25).
    //   i=3: w = (1.5,-4,1.25), q = (1.5,-4,0).
    const w = onnxWeight(W);
    const r = sparseGptCompress(w, H, { sparsity: 0.5, pattern: { kind: "unstructured" }, blockSize: 2, percDamp: 0 });
    assert.deepEqual(torchRows(w), [
      [4, 0, 0, 1.5],
      [0, 0, 0, -4],
      [0, -4.5, 0, 0],
    ]);
    assert.equal(r.pruned, 8);
    assert.equal(r.total, 12);
    // Pruned entries are exact +0 bits.
    const bits = new Uint32Array(w.bytes.buffer, w.bytes.byteOffset, 12);
    assert.equal([...bits].filter((x) => x === 0).length, 8);
    assert.ok(r.relativeError > 0 && r.relativeError < 1, `relative error ${r.relativeError}`);
  });

  test("relative error is tr(ΔBᵀHΔB)/tr(BᵀHB)", () => {
    const w = onnxWeight(W);
    const r = sparseGptCompress(w, H, { sparsity: 0.5, pattern: { kind: "unstructured" }, blockSize: 2, percDamp: 0 });
    const after = torchRows(w);
    const quad = (rows: number[][]) => rows.reduce((acc, row) => {
      let s = 0;
      for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) s += row[i]! * H[i * 4 + j]! * row[j]!;
      return acc + s;
    }, 0);
    const delta = after.map((row, o) => row.map((v, c) => v - W[o]![c]!));
    assert.ok(Math.abs(r.relativeError - quad(delta) / quad(W)) < 1e-12);
  });

  test("one slab of 128 (the official size): the whole 4-channel matrix shares one threshold", () => {
    // t = W² over all 12 entries (diag U = 1): 16,4,1 | 1,9,16 | 4,1,4 | 9,1,4. Sorted:
    // 1,1,1,1,4,4,4,4,9,9,16,16, position int(12·0.5) = 6 → θ = 4: 8 entries with t ≤ 4 are pruned,
    // chosen on the weights at the start of the slab (the OBS update changes only survivors).
    const w = onnxWeight(W);
    const r = sparseGptCompress(w, H, { sparsity: 0.5, pattern: { kind: "unstructured" }, percDamp: 0 });
    assert.equal(r.pruned, 8);
    const rows = torchRows(w);
    const zero = rows.map((row) => row.map((v) => (v === 0 ? 1 : 0)));
    assert.deepEqual(zero, [
      [0, 1, 1, 0],
      [1, 0, 1, 1],
      [1, 0, 1, 1],
    ]);
    // Column 0's survivor (4) is never updated: every pruned entry lies to its right.
    assert.equal(rows[0]![0], 4);
  });

  test("2:4 chooses per output channel on the weights as updated so far", () => {
    // One group of 4 in a slab of 4 (i=0): t = W² (diag U = 1), the 2 smallest per output channel:
    // row 0: 16,1,4,9 → c1,c2; row 1: 4,9,1,1 → c2,c3; row 2: 1,16,4,4 → c0,c2 (tie 4,4 → lower c).
    const w = onnxWeight(W);
    const r = sparseGptCompress(w, H, { sparsity: 0, pattern: { kind: "nm", n: 2, m: 4 }, percDamp: 0 });
    assert.equal(r.pruned, 6);
    const zero = torchRows(w).map((row) => row.map((v) => (v === 0 ? 1 : 0)));
    assert.deepEqual(zero, [
      [0, 1, 1, 0],
      [0, 0, 1, 1],
      [1, 0, 1, 0],
    ]);
  });

  test("s = 0 prunes nothing and changes nothing", () => {
    const w = onnxWeight(W);
    const r = sparseGptCompress(w, H, { sparsity: 0, pattern: { kind: "unstructured" }, blockSize: 2 });
    assert.equal(r.pruned, 0);
    assert.deepEqual(torchRows(w), W);
  });

  test("a dead input (H[i,i] = 0) zeroes its ONNX row; dampening makes H invertible", () => {
    // Input 3 never fires: its row and column of H are 0. H[3,3] := 1, B[3,:] := 0, then
    // H += 0.01·mean(diag)·I, so the singular H still factors.
    const h = H.slice();
    for (let i = 0; i < 4; i++) { h[3 * 4 + i] = 0; h[i * 4 + 3] = 0; }
    const w = onnxWeight(W);
    sparseGptCompress(w, h, { sparsity: 0, pattern: { kind: "unstructured" } });
    assert.deepEqual(torchRows(w).map((row) => row[3]), [0, 0, 0]);
  });

  test("an indefinite Hessian fails naming the layer", () => {
    const h = Float64Array.from([1, 2, 2, 1]);
    const w: WeightMatrix = { name: "blk.0.q", dataType: OnnxDataType.FLOAT, layout: "in_out", inDim: 2, outDim: 1, bytes: new Uint8Array(8) };
    assert.throws(() => sparseGptCompress(w, h, { sparsity: 0.5, pattern: { kind: "unstructured" }, percDamp: 0 }), (e: unknown) => e instanceof NumericError && e.subject === "blk.0.q");
  });

  test("float16 weights come back as float16 with the same values", () => {
    const w = onnxWeight(W, OnnxDataType.FLOAT16);
    sparseGptCompress(w, H, { sparsity: 0.5, pattern: { kind: "unstructured" }, blockSize: 2, percDamp: 0 });
    const table = halfToFloatTable();
    const u16 = new Uint16Array(w.bytes.buffer, w.bytes.byteOffset, 12);
    // B[in][out] row 3 = torch column 3 = (1.5, -4, 0).
    assert.deepEqual([table[u16[9]!], table[u16[10]!], table[u16[11]!]], [1.5, -4, 0]);
  });
});

describe("Hessian accumulation", () => {
  test("H = (2/N) Σ AᵀA over pooled tokens only, symmetric", () => {
    const acc = new HessianAccumulator("x", 2);
    // sample 0: tokens (1,2) and (3,4), the second not pooled; sample 1: token (0,1).
    acc.add({ type: "float32", dims: [1, 2, 2], data: Float32Array.from([1, 2, 3, 4]) }, Uint8Array.from([1, 0]), "s0");
    acc.add({ type: "float32", dims: [1, 1, 2], data: Float32Array.from([0, 1]) }, Uint8Array.from([1]), "s1");
    // Σ = [[1,2],[2,4]] + [[0,0],[0,1]] = [[1,2],[2,5]], times 2/2.
    assert.deepEqual([...acc.finish(2)], [1, 2, 2, 5]);
  });
});

describe("Hessian records (replicas)", () => {
  const act = (v: number[]) => ({ type: "float32" as const, dims: [1, v.length / 2, 2], data: Float32Array.from(v) });
  test("each sample's own AᵀA (upper triangle) is its record; reduce adds the records in sample order", () => {
    const acc = new HessianAccumulator("x", 2);
    acc.keepRecords();
    // Sample 0: tokens (1,2) and (3,4), both pooled: [[1+9, 2+12], [., 4+16]].
    acc.add(act([1, 2, 3, 4]), Uint8Array.from([1, 1]), "s0");
    assert.deepEqual([...acc.record()], [10, 14, 20]);
    // Sample 1: token (0.5, 0) pooled, (7, 7) not: [[0.25, 0], [., 0]].
    acc.add(act([0.5, 0, 7, 7]), Uint8Array.from([1, 0]), "s1");
    assert.deepEqual([...acc.record()], [0.25, 0, 0]);
    // A replica that saw only sample 1 reduces both records: the bits of one process.
    const other = new HessianAccumulator("x", 2);
    other.keepRecords();
    other.add(act([0.5, 0, 7, 7]), Uint8Array.from([1, 0]), "s1");
    other.reduce([Float64Array.from([10, 14, 20]), other.record()]);
    assert.deepEqual([...other.finish(2)], [10.25, 14, 14, 20]);
    assert.deepEqual([...acc.finish(2)], [10.25, 14, 14, 20]);
  });

  test("the sample's sum is formed before it joins the total (an order one process and replicas share)", () => {
    // Total 1 after sample 0; sample 1 has four tokens of 2^-27, so four terms of 2^-54. Formed
    // first they are 2^-52, which 1 keeps (1 + 2^-52 is a float64); added to 1 one at a time,
    // each 2^-54 would round away and leave 1.
    const tiny = 2 ** -27;
    const acc = new HessianAccumulator("x", 1);
    acc.keepRecords();
    acc.add({ type: "float32", dims: [1, 1, 1], data: Float32Array.from([1]) }, Uint8Array.from([1]), "s0");
    acc.add({ type: "float32", dims: [1, 4, 1], data: Float32Array.from([tiny, tiny, tiny, tiny]) }, Uint8Array.from([1, 1, 1, 1]), "s1");
    assert.deepEqual([...acc.record()], [2 ** -52]);
    assert.equal(acc.finish(2)[0], 1 + 2 ** -52);
  });

  test("without keepRecords() no record is kept, and asking for one says so", () => {
    const acc = new HessianAccumulator("model.layers.0.mlp", 2);
    acc.add(act([1, 2]), Uint8Array.from([1]), "s0");
    assert.throws(() => acc.record(), /model\.layers\.0\.mlp: no record was kept/);
    assert.deepEqual([...acc.finish(1)], [2, 4, 4, 8]);
  });

  test("a record of the wrong size is refused, naming the tensor", () => {
    const acc = new HessianAccumulator("model.layers.0.mlp", 3);
    assert.throws(() => acc.reduce([new Float64Array(5)]), /model\.layers\.0\.mlp.*sample 0's Hessian record has 5 entries, expected 6/);
  });
});
