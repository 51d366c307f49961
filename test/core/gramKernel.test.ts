/**
 * gramQuadratic (the WebAssembly SIMD kernel behind SparseGPT's output energy and error): a value
 * worked by hand, and the bits of the scalar `quadratic` for widths on every side of the kernel's
 * steps (odd, multiples of 8, one below and above, one output), H with zeros and negative
 * entries; outputEnergy the same for both weight layouts.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";
import { gramQuadratic, paddedChannels } from "../../services/core/src/prune/gramKernelWasm.js";
import { outputEnergy, quadratic, readWeights } from "../../services/core/src/prune/sparseGpt.js";
import { OnnxDataType } from "../../services/core/src/onnx/dtype.js";

/** Bᵀ from B [n, out] (row-major), as gramQuadratic's callers write it. */
const fillFrom = (b: Float64Array, n: number, out: number) => (bt: Float64Array, inP: number) => {
  for (let c = 0; c < n; c++) for (let o = 0; o < out; o++) bt[o * inP + c] = b[c * out + o]!;
};

describe("gramQuadratic", () => {
  test("tr(BᵀHB) by hand: B = [1, 2]ᵀ, H = [[2, 1], [1, 3]] gives 2 + 2·1·2 + 3·4 = 18", () => {
    const h = Float64Array.from([2, 1, 1, 3]);
    const b = Float64Array.from([1, 2]);
    assert.equal(gramQuadratic(h, 2, 1, fillFrom(b, 2, 1)), 18);
    // Two outputs: the second column [3, -1] adds 2·9 + 2·1·(3·-1) + 3·1 = 15.
    const b2 = Float64Array.from([1, 3, 2, -1]);
    assert.equal(gramQuadratic(h, 2, 2, fillFrom(b2, 2, 2)), 33);
  });

  test("the scalar loop's bits for every width around the kernel's steps", () => {
    const rand = mulberry32(17);
    for (const n of [1, 2, 3, 7, 8, 9, 15, 16, 31, 32, 33, 63, 64, 65, 100]) {
      for (const out of [1, 2, 5, 16, 37]) {
        const h = Float64Array.from({ length: n * n }, () => (rand() < 0.25 ? 0 : rand() - 0.5));
        const b = Float64Array.from({ length: n * out }, () => (rand() - 0.5) * 4);
        const got = gramQuadratic(h, n, out, fillFrom(b, n, out));
        assert.ok(Object.is(got, quadratic(h, b, n, out)), `n ${n}, out ${out}: ${got} vs ${quadratic(h, b, n, out)}`);
      }
    }
  });

  test("a thread's kept memory: after a larger call full of NaN and infinities, smaller ones still give the scalar loop's bits", () => {
    const rand = mulberry32(23);
    const [bigN, bigOut] = [70, 40];
    const poison = Float64Array.from({ length: bigN * bigOut }, (_, i) => [NaN, Infinity, -Infinity, 5e-324][i % 4]!);
    gramQuadratic(new Float64Array(bigN * bigN).fill(1), bigN, bigOut, fillFrom(poison, bigN, bigOut));
    for (const [n, out] of [[9, 3], [33, 7], [65, 40], [1, 1]] as const) {
      const h = Float64Array.from({ length: n * n }, () => rand() - 0.5);
      const b = Float64Array.from({ length: n * out }, () => (rand() - 0.5) * 4);
      const got = gramQuadratic(h, n, out, fillFrom(b, n, out));
      assert.ok(Object.is(got, quadratic(h, b, n, out)), `n ${n}, out ${out}: ${got}`);
    }
  });

  test("the padding: channels past n and the pair partner of a last odd row are zeros", () => {
    assert.equal(paddedChannels(7), 8);
    assert.equal(paddedChannels(8), 16);
    assert.equal(paddedChannels(1), 8);
  });

  test("outputEnergy: the same bits from either weight layout, and the scalar loop's", () => {
    const rand = mulberry32(5);
    const [n, out] = [45, 13];
    const h = Float64Array.from({ length: n * n }, () => rand() - 0.5);
    const values = Float32Array.from({ length: n * out }, () => rand() - 0.5);
    const inOut = { name: "w", dataType: OnnxDataType.FLOAT, layout: "in_out" as const, inDim: n, outDim: out, bytes: new Uint8Array(values.buffer) };
    const transposed = new Float32Array(n * out);
    for (let c = 0; c < n; c++) for (let o = 0; o < out; o++) transposed[o * n + c] = values[c * out + o]!;
    const outIn = { ...inOut, layout: "out_in" as const, bytes: new Uint8Array(transposed.buffer) };
    const want = quadratic(h, readWeights(inOut), n, out);
    assert.ok(Object.is(outputEnergy(h, inOut), want));
    assert.ok(Object.is(outputEnergy(h, outIn), want));
  });
});
