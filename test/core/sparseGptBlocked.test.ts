/**
 * The blocked hot loops of SparseGPT (Hessian accumulation, Cholesky factors and inverse, the
 * slab updates, the relative error) against the code as it was (test/support/sparseGptReference.ts):
 * the same bits, on random activations and weights of sizes that leave remainders to every
 * block of 4, with zero activations, dead inputs, every stored type and layout, both patterns,
 * and the same errors.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";
import { HessianAccumulator } from "../../services/core/src/prune/hessian.js";
import { obsUpdate, prepareHessian, readWeights, sparseGptCompressPrepared, type SparseGptOptions } from "../../services/core/src/prune/sparseGpt.js";
import { parsePattern, type WeightMatrix } from "../../services/core/src/prune/maskSelect.js";
import { OnnxDataType, floatToBfloat16, floatToHalf } from "../../services/core/src/onnx/dtype.js";
import { NumericError } from "../../services/core/src/errors.js";
import * as reference from "../support/sparseGptReference.js";

const bits = (a: Float64Array | Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Activations [1, tokens, n]: a spread of values, some exact zeros, and (dead) every 7th channel zero. */
function activations(rand: () => number, tokens: number, n: number, half: boolean, dead = true): { dims: number[]; data: Float32Array | Uint16Array; type: "float32" | "float16" } {
  const v = Float32Array.from({ length: tokens * n }, (_, i) => (dead && (i % n) % 7 === 3) || rand() < 0.1 ? 0 : (rand() - 0.5) * 2 ** Math.floor(rand() * 6 - 3));
  return half ? { dims: [1, tokens, n], data: Uint16Array.from(v, (x) => floatToHalf(x)), type: "float16" } : { dims: [1, tokens, n], data: v, type: "float32" };
}

function weightOf(rand: () => number, n: number, out: number, dataType: number, layout: "in_out" | "out_in"): WeightMatrix {
  const v = Float32Array.from({ length: n * out }, () => (rand() - 0.5) * 0.2);
  const bytes = dataType === OnnxDataType.FLOAT ? new Uint8Array(v.buffer)
    : new Uint8Array(Uint16Array.from(v, (x) => (dataType === OnnxDataType.FLOAT16 ? floatToHalf(x) : floatToBfloat16(x))).buffer);
  return { name: "layer", dataType, layout, inDim: n, outDim: out, bytes };
}

function hessians(seed: number, n: number, tokens: number, half: boolean, dead = true): { mine: Float64Array; theirs: Float64Array } {
  const rand = mulberry32(seed);
  const mine = new HessianAccumulator("x", n);
  const theirs = new reference.HessianAccumulator("x", n);
  for (let sample = 0; sample < 3; sample++) {
    const act = activations(rand, tokens, n, half, dead);
    const pool = Uint8Array.from({ length: tokens }, () => (rand() < 0.8 ? 1 : 0));
    mine.add(act, pool, `sample ${sample}`);
    theirs.add(act, pool, `sample ${sample}`);
  }
  return { mine: mine.finish(3), theirs: theirs.finish(3) };
}

describe("blocked SparseGPT loops give the reference's bits", () => {
  for (const [n, tokens] of [[1, 3], [6, 5], [37, 23], [130, 41], [261, 18]] as const) {
    test(`Hessian ${n}x${n} over ${tokens} tokens, float32 and float16 activations; its factor U`, () => {
      for (const half of [false, true]) {
        const { mine, theirs } = hessians(n * 31 + tokens, n, tokens, half);
        assert.ok(bits(mine).equals(bits(theirs)), `H, half=${half}`);
        const a = prepareHessian(mine, n, "x");
        const b = reference.prepareHessian(theirs, n, "x");
        assert.ok(bits(a.u).equals(bits(b.u)), `U, half=${half}`);
        assert.ok(bits(a.dead).equals(bits(b.dead)), `dead inputs, half=${half}`);
      }
    });
  }

  test("compression: every type, layout and pattern, several slab sizes, with and without dead inputs", () => {
    const rand = mulberry32(8);
    // Outputs that are a multiple of 8 (72, 16) go through the lazy update's WebAssembly kernel; the others the scalar loop.
    for (const [n, out, dead] of [[8, 5, true], [40, 33, false], [136, 70, true], [136, 72, true], [136, 70, false], [261, 19, true], [261, 16, false]] as const) {
      const { mine } = hessians(n, n, 2 * n + 5, false, dead);
      const prepared = prepareHessian(mine, n, "x");
      for (const dataType of [OnnxDataType.FLOAT, OnnxDataType.FLOAT16, OnnxDataType.BFLOAT16]) {
        for (const layout of ["in_out", "out_in"] as const) {
          const options: SparseGptOptions[] = [
            { sparsity: 0.5, pattern: { kind: "unstructured" } },
            { sparsity: rand() * 0.9, pattern: { kind: "unstructured" }, blockSize: 32 },
            { sparsity: 0, pattern: { kind: "unstructured" } },
            ...(n % 4 === 0 ? [{ sparsity: 0.5, pattern: parsePattern("2:4") }, { sparsity: 0.5, pattern: parsePattern("2:4"), blockSize: 4 }] : []),
            ...(n % 8 === 0 ? [{ sparsity: 0.5, pattern: parsePattern("4:8") }] : []),
          ];
          for (const opts of options) {
            const w = weightOf(rand, n, out, dataType, layout);
            const v = { ...w, bytes: w.bytes.slice() };
            // The float64 weights before they are written back (a last-bit change in them would
            // mostly vanish in the rounding to the stored type).
            const b64 = readWeights(w);
            const mineObs = obsUpdate(b64, prepared, opts, out);
            const theirsObs = reference.obsUpdate(b64, prepared, opts, out);
            const a = sparseGptCompressPrepared(w, prepared, opts);
            const b = reference.sparseGptCompressPrepared(v, prepared, opts);
            const label = `${n}x${out}${dead ? " dead inputs" : ""} type ${dataType} ${layout} ${JSON.stringify(opts)}`;
            assert.ok(bits(mineObs.weights).equals(bits(theirsObs.weights)), `float64 weights, ${label}`);
            assert.equal(mineObs.pruned, theirsObs.pruned, label);
            assert.ok(bits(w.bytes).equals(bits(v.bytes)), `weights, ${label}`);
            assert.equal(a.pruned, b.pruned, label);
            assert.ok(Object.is(a.relativeError, b.relativeError), `relative error ${a.relativeError} vs ${b.relativeError}, ${label}`);
          }
        }
      }
    }
  });

  test("the same errors: NaN activations name the token and channel; an indefinite Hessian the pivot", () => {
    const act = activations(mulberry32(2), 4, 9, false);
    (act.data as Float32Array)[2 * 9 + 5] = NaN;
    const pool = new Uint8Array(4).fill(1);
    let expected = "";
    try {
      new reference.HessianAccumulator("x", 9).add(act, pool, "s0");
    } catch (err) {
      expected = (err as Error).message;
    }
    assert.match(expected, /token 2, channel 5/);
    assert.throws(() => new HessianAccumulator("x", 9).add(act, pool, "s0"), (e: unknown) => e instanceof NumericError && e.message === expected);

    const indefinite = Float64Array.from([1, 2, 0, 2, 1, 0, 0, 0, 1]);
    let want = "";
    try {
      reference.prepareHessian(indefinite, 3, "layer", 0);
    } catch (err) {
      want = (err as Error).message;
    }
    assert.match(want, /not positive definite/);
    assert.throws(() => prepareHessian(indefinite, 3, "layer", 0), (e: unknown) => e instanceof NumericError && e.message === want);
  });
});
