/**
 * The pruning-mask contract, checked two ways: small hand-computed matrices whose expected masks
 * are written out below, and random matrices (heavy ties included) against a slow reference that
 * is the contract read literally: a stable sort of (M, c) per column.
 */
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  applyMask, computeMask, parsePattern, type MaskOptions, type Pattern, type WeightMatrix,
} from "../../services/core/src/prune/maskSelect.js";
import { OnnxDataType, floatToBfloat16, floatToHalf } from "../../services/core/src/onnx/dtype.js";
import { decode, referenceMask, rowsOf, weight, type Layout } from "../support/maskContract.js";
import { InvalidArgumentError, NumericError } from "../../services/core/src/errors.js";

const F32 = OnnxDataType.FLOAT;
const F16 = OnnxDataType.FLOAT16;
const BF16 = OnnxDataType.BFLOAT16;

function maskRows(w: WeightMatrix, scale: number[] | null, opts: MaskOptions): number[][] {
  const result = computeMask(w, scale ? Float64Array.from(scale) : null, opts);
  assert.equal(result.pruned, result.mask.reduce((a, b) => a + b, 0), "pruned counts the mask");
  assert.equal(result.total, w.inDim * w.outDim);
  return rowsOf(w, result.mask);
}

const unstructured: Pattern = { kind: "unstructured" };

describe("hand-computed masks", () => {
  test("each column has its own threshold, unlike one threshold over the matrix", () => {
    // |W| per column: o0 = 1,2,3,4   o1 = 10,20,30,40   o2 = 5,6,7,8.
    // Column scope, sparsity 0.5: k = floor(4 * 0.5) = 2 per column -> c0, c1 of every column.
    // Matrix scope: k = floor(12 * 0.5) = 6 smallest of all: 1,2,3,4 (all of o0) and 5,6 (o2: c0,c1).
    const rows = [
      [1, 10, -5],
      [2, 20, 6],
      [-3, 30, 7],
      [4, 40, -8],
    ];
    assert.deepEqual(maskRows(weight(rows), null, { sparsity: 0.5, pattern: unstructured }), [
      [1, 1, 1],
      [1, 1, 1],
      [0, 0, 0],
      [0, 0, 0],
    ]);
    assert.deepEqual(maskRows(weight(rows), null, { sparsity: 0.5, pattern: unstructured, scope: "matrix" }), [
      [1, 0, 1],
      [1, 0, 1],
      [1, 0, 0],
      [1, 0, 0],
    ]);
  });

  test("the scale changes the choice", () => {
    // sqrt(s) = 10, 1, 1, 1; k = floor(4 * 0.25) = 1.
    // |W| alone prunes c0 in both columns (|W| = 1). With the scale:
    //   o0: M = 1*10, 2, 3, 4 -> c1;   o1: M = 1*10, 3, 2, 4 -> c2.
    const rows = [
      [1, 1],
      [2, 3],
      [3, 2],
      [4, 4],
    ];
    const opts = { sparsity: 0.25, pattern: unstructured };
    assert.deepEqual(maskRows(weight(rows), null, opts), [[1, 1], [0, 0], [0, 0], [0, 0]]);
    assert.deepEqual(maskRows(weight(rows), [100, 1, 1, 1], opts), [[0, 0], [1, 0], [0, 1], [0, 0]]);
  });

  test("ties prune the lower input index first (unstructured)", () => {
    // sqrt(s) = 2, 1, 1, 4; k = floor(4 * 0.5) = 2.
    //   o0: W = 1, 2, 3, 0.5 -> M = 2, 2, 3, 2: three tie at 2, the lowest two (c0, c1) go.
    //   o1: W = 3, 5, 6, 1   -> M = 6, 5, 6, 4: 4 (c3) and 5 (c1) go.
    //   o2: W = 3.5, -7, 7, -1.75 -> M = 7, 7, 7, 7: all tie, c0 and c1 go.
    const rows = [
      [1, 3, 3.5],
      [2, 5, -7],
      [3, 6, 7],
      [0.5, 1, -1.75],
    ];
    assert.deepEqual(maskRows(weight(rows), [4, 1, 1, 16], { sparsity: 0.5, pattern: unstructured }), [
      [1, 0, 1],
      [1, 1, 1],
      [0, 0, 0],
      [0, 1, 0],
    ]);
  });

  const nmRows = [
    // o0          o1
    [4, 5],
    [3, 5],
    [2, 5],
    [1, 5],
    [1, 2],
    [-1, -2],
    [2, 2],
    [0, -2],
  ];

  test("2:4 prunes the 2 smallest of every 4 inputs, ties to the lower index", () => {
    // o0: group c0..3 = 4,3,2,1 -> c2, c3.  group c4..7 = 1,1,2,0 -> 0 (c7), then the tie 1,1 -> c4.
    // o1: group c0..3 all 5 -> c0, c1.      group c4..7 all |2| -> c4, c5.
    assert.deepEqual(maskRows(weight(nmRows), null, { sparsity: 0.5, pattern: parsePattern("2:4") }), [
      [0, 1],
      [0, 1],
      [1, 0],
      [1, 0],
      [1, 1],
      [0, 1],
      [0, 0],
      [1, 0],
    ]);
  });

  test("4:8 prunes the 4 smallest of every 8 inputs, ties to the lower index", () => {
    // o0: sorted (M, c): 0 c7, 1 c3, 1 c4, 1 c5 | 2 c2, 2 c6, 3 c1, 4 c0 -> c3, c4, c5, c7.
    // o1: 2 c4, 2 c5, 2 c6, 2 c7 | 5 c0..c3 -> c4..c7.
    assert.deepEqual(maskRows(weight(nmRows), null, { sparsity: 0.5, pattern: parsePattern("4:8") }), [
      [0, 0],
      [0, 0],
      [0, 0],
      [1, 0],
      [1, 1],
      [1, 1],
      [0, 1],
      [1, 1],
    ]);
  });

  test("the scale applies inside N:M groups too", () => {
    // sqrt(s) = 1, 1, 3, 1: o0 M = 4, 3, 6, 1 -> 2:4 prunes c3 (1) and c1 (3), not c2.
    assert.deepEqual(maskRows(weight(nmRows.slice(0, 4)), [1, 1, 9, 1], { sparsity: 0.5, pattern: parsePattern("2:4") }), [
      [0, 1],
      [1, 1],
      [0, 0],
      [1, 0],
    ]);
  });

  test("out_in storage gives the transposed mask of in_out storage", () => {
    const rows = [
      [1, 1, 0.25],
      [2, 3, -9],
      [3, 2, 4],
      [4, 4, 0],
    ];
    const scale = Float64Array.from([100, 1, 1, 1]);
    const opts = { sparsity: 0.5, pattern: unstructured };
    const a = computeMask(weight(rows, F32, "in_out"), scale, opts).mask;
    const b = computeMask(weight(rows, F32, "out_in"), scale, opts).mask;
    // o0: M = 10,2,3,4 -> c1,c2.  o1: 10,3,2,4 -> c1,c2.  o2: 2.5,9,4,0 -> c3,c0.
    assert.deepEqual(Array.from(a), [0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1]); // [in, out] row-major
    assert.deepEqual(Array.from(b), [0, 1, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]); // [out, in] row-major
    for (const pattern of [unstructured, parsePattern("2:4")]) {
      const x = weight(rows, F32, "in_out");
      const y = weight(rows, F32, "out_in");
      assert.deepEqual(rowsOf(x, computeMask(x, scale, { sparsity: 0.5, pattern }).mask), rowsOf(y, computeMask(y, scale, { sparsity: 0.5, pattern }).mask));
    }
  });

  test("magnitude matrix scope breaks ties by (c, o) in row-major [in, out] order", () => {
    // |W| = [[1, 2, 1], [1, 0, 3]]; k = floor(6 * 0.5) = 3: 0 at (1,1), then two of the three 1s
    // in row-major order: (0,0), (0,2); (1,0) stays.
    const rows = [
      [1, -2, -1],
      [1, 0, 3],
    ];
    const opts: MaskOptions = { sparsity: 0.5, pattern: unstructured, scope: "matrix" };
    const expected = [
      [1, 0, 1],
      [0, 1, 0],
    ];
    for (const layout of ["in_out", "out_in"] as const) {
      for (const dt of [F32, F16, BF16]) assert.deepEqual(maskRows(weight(rows, dt, layout), null, opts), expected);
    }
    // Column scope on the same weight: k = floor(2 * 0.5) = 1 per column, ties -> c0.
    assert.deepEqual(maskRows(weight(rows), null, { sparsity: 0.5, pattern: unstructured, scope: "column" }), [
      [1, 0, 1],
      [0, 1, 0],
    ]);
  });

  test("sparsity 0 prunes nothing", () => {
    const w = weight([[1, 0], [0, 2], [3, -0]]);
    for (const opts of [{ sparsity: 0, pattern: unstructured }, { sparsity: 0, pattern: unstructured, scope: "matrix" as const }]) {
      const r = computeMask(w, null, opts);
      assert.equal(r.pruned, 0);
      assert.ok(r.mask.every((b) => b === 0));
    }
  });

  test("a scale of -0 counts as 0", () => {
    // sqrt(-0) is -0; M must still order as +0 (and not break the key histograms).
    // o0: M = 0, 0, 1*1 ... k = floor(3 * 0.34) = 1 -> c0.
    assert.deepEqual(maskRows(weight([[5], [-6], [1]]), [-0, 0, 1], { sparsity: 0.34, pattern: unstructured }), [[1], [0], [0]]);
  });
});

describe("types", () => {
  test("float16 and bfloat16 give the mask of the float32 of the same values", () => {
    const rand = rng(7);
    const inDim = 96;
    const outDim = 11;
    const scale = Float64Array.from({ length: inDim }, () => rand() * 3);
    for (const dt of [F16, BF16]) {
      const bits = new Uint16Array(inDim * outDim);
      for (let i = 0; i < bits.length; i++) bits[i] = (dt === F16 ? floatToHalf : floatToBfloat16)((rand() - 0.5) * 4);
      const asFloat = Float32Array.from(bits, (b) => decode(dt, b));
      const half: WeightMatrix = { name: "h", dataType: dt, layout: "in_out", inDim, outDim, bytes: new Uint8Array(bits.buffer) };
      const full: WeightMatrix = { ...half, dataType: F32, bytes: new Uint8Array(asFloat.buffer) };
      const patterns: Pattern[] = [unstructured, parsePattern("2:4"), parsePattern("4:8")];
      for (const pattern of patterns) {
        const opts: MaskOptions = { sparsity: 0.6, pattern };
        assert.deepEqual(computeMask(half, scale, opts).mask, computeMask(full, scale, opts).mask);
        assert.deepEqual(computeMask(half, null, opts).mask, computeMask(full, null, opts).mask);
      }
      const matrix: MaskOptions = { sparsity: 0.6, pattern: unstructured, scope: "matrix" };
      assert.deepEqual(computeMask(half, null, matrix).mask, computeMask(full, null, matrix).mask);
    }
  });

  test("weight bytes that are not aligned to the element size", () => {
    const w = weight([[1, -4], [2, 3], [-3, 2], [4, 1]]);
    const shifted = new Uint8Array(w.bytes.length + 1).subarray(1);
    shifted.set(w.bytes);
    const moved = { ...w, bytes: shifted };
    const opts = { sparsity: 0.5, pattern: unstructured };
    const mask = computeMask(moved, null, opts).mask;
    assert.deepEqual(mask, computeMask(w, null, opts).mask);
    // k = 2 per column: o0 |W| = 1,2,3,4 -> c0, c1; o1 |W| = 4,3,2,1 -> c2, c3.
    assert.deepEqual(Array.from(mask), [1, 0, 1, 0, 0, 1, 0, 1]);
    applyMask(moved, mask);
    assert.deepEqual(Array.from(new Float32Array(shifted.slice().buffer)), [0, -4, 0, 3, -3, 0, 4, 0]);
  });
});

describe("applyMask", () => {
  test("zeroes exactly the masked elements (float16), leaving the others' bits", () => {
    const bits = Uint16Array.from([0x3c00, 0xbc00, 0x8000, 0x7bff, 0x0001, 0xfbff, 0x3555, 0x8001]);
    const w: WeightMatrix = { name: "h", dataType: F16, layout: "in_out", inDim: 4, outDim: 2, bytes: new Uint8Array(bits.slice().buffer) };
    const mask = Uint8Array.from([1, 0, 1, 0, 0, 1, 1, 0]);
    applyMask(w, mask);
    const after = new Uint16Array(w.bytes.buffer);
    for (let i = 0; i < bits.length; i++) assert.equal(after[i], mask[i] ? 0x0000 : bits[i], `element ${i}`);
  });

  test("applies a computed mask: pruned elements become +0, the rest keep their bits", () => {
    const rand = rng(3);
    const rows = Array.from({ length: 16 }, () => Array.from({ length: 5 }, () => (rand() - 0.5) * 8));
    for (const dt of [F32, F16, BF16]) {
      const w = weight(rows, dt, "out_in");
      const before = w.bytes.slice();
      const { mask, pruned } = computeMask(w, null, { sparsity: 0.5, pattern: unstructured });
      assert.equal(pruned, 8 * 5);
      applyMask(w, mask);
      const size = dt === F32 ? 4 : 2;
      for (let i = 0; i < mask.length; i++) {
        const got = Array.from(w.bytes.subarray(i * size, (i + 1) * size));
        const want = mask[i] ? new Array<number>(size).fill(0) : Array.from(before.subarray(i * size, (i + 1) * size));
        assert.deepEqual(got, want);
      }
    }
  });
});

describe("applyMask four mask bytes a step", () => {
  // Any non-zero byte clears (only 0 keeps), whatever its bits; the elements past the last whole
  // word of four, and weights or masks whose words are not aligned, take the element path.
  test("every non-zero byte value clears, on every type, at aligned and shifted offsets, for sizes around a word", () => {
    const rand = rng(77);
    const byteValues = [1, 2, 0x7f, 0x80, 0x81, 0xfe, 0xff, 0x10];
    for (const dt of [F32, F16, BF16]) {
      const size = dt === F32 ? 4 : 2;
      for (const [inDim, outDim] of [[1, 1], [1, 3], [2, 2], [3, 3], [5, 7], [16, 9]] as const) {
        const total = inDim * outDim;
        for (const [wShift, mShift] of [[0, 0], [2, 0], [0, 1], [4, 4], [0, 2]] as const) {
          const original = Uint8Array.from({ length: total * size }, () => Math.floor(rand() * 256));
          const bytes = new Uint8Array(total * size + 8).subarray(wShift, wShift + total * size);
          bytes.set(original);
          const mask = new Uint8Array(total + 8).subarray(mShift, mShift + total);
          for (let i = 0; i < total; i++) mask[i] = rand() < 0.5 ? 0 : byteValues[Math.floor(rand() * byteValues.length)]!;
          applyMask({ name: "w", dataType: dt, layout: "in_out", inDim, outDim, bytes }, mask);
          for (let i = 0; i < total; i++) {
            const got = Array.from(bytes.subarray(i * size, (i + 1) * size));
            const want = mask[i] !== 0 ? new Array<number>(size).fill(0) : Array.from(original.subarray(i * size, (i + 1) * size));
            assert.deepEqual(got, want, `type ${dt}, ${inDim}x${outDim}, shifts ${wShift}/${mShift}, element ${i} (mask byte ${mask[i]})`);
          }
        }
      }
    }
  });

  test("by hand: float16 elements 0..3 of one mask word, high and low halves of the two weight words", () => {
    const bits = Uint16Array.from([0x1111, 0x2222, 0x3333, 0x4444, 0x5555]);
    const w: WeightMatrix = { name: "h", dataType: F16, layout: "in_out", inDim: 5, outDim: 1, bytes: new Uint8Array(bits.slice().buffer) };
    applyMask(w, Uint8Array.from([0, 0x80, 1, 0, 0xff]));
    assert.deepEqual(Array.from(new Uint16Array(w.bytes.buffer)), [0x1111, 0, 0, 0x4444, 0]);
  });
});

describe("errors", () => {
  const w = weight([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12]], F32, "in_out", "model.layers.0.mlp.up_proj");
  const isInvalid = (subject: string) => (e: unknown) => e instanceof InvalidArgumentError && e.subject === subject;

  test("sparsity outside [0, 1)", () => {
    for (const sparsity of [-0.1, 1, NaN, 1.5, Infinity]) {
      assert.throws(() => computeMask(w, null, { sparsity, pattern: unstructured }), isInvalid("sparsity"), String(sparsity));
    }
  });

  test("bad patterns", () => {
    for (const text of ["3:2", "0:4", "4:4", "2-4", "", "2:4:8", "unstructed", "-1:4", "1.5:4"]) {
      assert.throws(() => parsePattern(text), isInvalid("pattern"), text);
    }
    assert.throws(() => computeMask(w, null, { sparsity: 0.5, pattern: { kind: "nm", n: 4, m: 4 } }), isInvalid("pattern"));
    assert.deepEqual(parsePattern("unstructured"), { kind: "unstructured" });
    assert.deepEqual(parsePattern("2:4"), { kind: "nm", n: 2, m: 4 });
    assert.deepEqual(parsePattern(" 4:8 "), { kind: "nm", n: 4, m: 8 });
    assert.deepEqual(parsePattern("3:16"), { kind: "nm", n: 3, m: 16 });
  });

  test("input dimension not a multiple of M names the layer", () => {
    // in = 6: fine for 1:2 and 2:3, not for 2:4.
    assert.throws(() => computeMask(w, null, { sparsity: 0.5, pattern: parsePattern("2:4") }), isInvalid("model.layers.0.mlp.up_proj"));
    computeMask(w, null, { sparsity: 0.5, pattern: parsePattern("2:3") });
  });

  test("matrix scope needs magnitude and the unstructured pattern", () => {
    assert.throws(() => computeMask(w, new Float64Array(6).fill(1), { sparsity: 0.5, pattern: unstructured, scope: "matrix" }), isInvalid("scope"));
    assert.throws(() => computeMask(w, null, { sparsity: 0.5, pattern: parsePattern("1:2"), scope: "matrix" }), isInvalid("scope"));
  });

  test("a scale of the wrong length names the layer", () => {
    assert.throws(() => computeMask(w, new Float64Array(5), { sparsity: 0.5, pattern: unstructured }), isInvalid("model.layers.0.mlp.up_proj"));
  });

  test("NaN in the metric is a NumericError naming the layer", () => {
    const isNumeric = (e: unknown) => e instanceof NumericError && e.subject === "model.layers.0.mlp.up_proj";
    const rows = [[1, 2], [3, NaN], [5, 6], [7, 8]];
    for (const dt of [F32, F16, BF16]) {
      for (const layout of ["in_out", "out_in"] as const) {
        const bad = weight(rows, dt, layout, "model.layers.0.mlp.up_proj");
        for (const opts of [
          { sparsity: 0.5, pattern: unstructured },
          { sparsity: 0, pattern: unstructured },
          { sparsity: 0.5, pattern: parsePattern("2:4") },
          { sparsity: 0.5, pattern: unstructured, scope: "matrix" as const },
        ]) {
          assert.throws(() => computeMask(bad, null, opts), isNumeric, `${dt} ${layout} ${JSON.stringify(opts)}`);
        }
      }
    }
    const good = weight([[1, 2], [3, 4], [5, 6], [7, 8]], F32, "in_out", "model.layers.0.mlp.up_proj");
    for (const scale of [[1, NaN, 1, 1], [1, -1, 1, 1]]) {
      assert.throws(() => computeMask(good, Float64Array.from(scale), { sparsity: 0.5, pattern: unstructured }), isNumeric);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Random matrices against the contract read literally.

const rng = mulberry32;

/** Value generators, from heavy ties to none. */
const VALUE_KINDS: Record<string, (rand: () => number) => number> = {
  // A tiny set: many exact ties in |W| and, with the scale set below, in M (1*sqrt(4) = 2*sqrt(1)).
  tiny: (rand) => [0, -0, 0.5, -0.5, 1, -1, 2, -2][Math.floor(rand() * 8)]!,
  mostlyZero: (rand) => (rand() < 0.7 ? 0 : rand() - 0.5),
  continuous: (rand) => (rand() + rand() + rand() - 1.5) * 0.1,
  wideRange: (rand) => (rand() - 0.5) * 2 ** Math.floor(rand() * 40 - 30),
};

const SCALE_KINDS: Record<string, ((rand: () => number, c: number) => number) | null> = {
  none: null,
  tiny: (rand) => [0, 0.25, 1, 4][Math.floor(rand() * 4)]!,
  continuous: (rand) => 1e-4 + rand() * rand() * 4,
  // Distinct doubles within one float32 step of each other: with |W| = 1 the keys all collide
  // and only the exact comparison can rank them.
  nearTies: (rand) => 1 + Math.floor(rand() * 64) * 2 ** -45,
};

describe("random matrices match the stable-sort reference", () => {
  const rand = rng(2024);
  const shapes: Array<[number, number]> = [[1, 1], [3, 2], [8, 9], [40, 17], [256, 7], [1100, 5], [4096, 3]];
  for (const [valueKind, value] of Object.entries(VALUE_KINDS)) {
    for (const [scaleKind, scaleOf] of Object.entries(SCALE_KINDS)) {
      test(`values ${valueKind}, scale ${scaleKind}`, () => {
        for (const [inDim, outDim] of shapes) {
          const rows = Array.from({ length: inDim }, () =>
            Array.from({ length: outDim }, () => (scaleKind === "nearTies" && rand() < 0.8 ? 1 : value(rand))));
          const scale = scaleOf ? Float64Array.from({ length: inDim }, (_, c) => scaleOf(rand, c)) : null;
          for (const dt of [F32, F16, BF16]) {
            for (const layout of ["in_out", "out_in"] as const) {
              const w = weight(rows, dt, layout);
              const sparsities = [0, 0.5, 0.999, rand()];
              for (const sparsity of sparsities) {
                const opts: MaskOptions = { sparsity, pattern: unstructured };
                const got = computeMask(w, scale, opts);
                const label = `${inDim}x${outDim} ${dt} ${layout} s=${sparsity}`;
                const cutRows = rowsOf(w, got.mask);
                assert.deepEqual(cutRows, referenceMask(w, scale, opts), label);
                // Achieved sparsity: exactly floor(in * s) in every column.
                for (let o = 0; o < outDim; o++) {
                  assert.equal(cutRows.reduce((sum, row) => sum + row[o]!, 0), Math.floor(inDim * sparsity), `${label} column ${o}`);
                }
                assert.equal(got.pruned, Math.floor(inDim * sparsity) * outDim, label);
              }
              for (const pattern of [parsePattern("2:4"), parsePattern("4:8"), parsePattern("3:5")]) {
                if (pattern.kind === "nm" && inDim % pattern.m !== 0) continue;
                const opts: MaskOptions = { sparsity: 0.5, pattern };
                assert.deepEqual(rowsOf(w, computeMask(w, scale, opts).mask), referenceMask(w, scale, opts));
              }
              if (!scale) {
                for (const sparsity of [0.5, rand()]) {
                  const opts: MaskOptions = { sparsity, pattern: unstructured, scope: "matrix" };
                  const got = computeMask(w, null, opts);
                  assert.deepEqual(rowsOf(w, got.mask), referenceMask(w, null, opts), `matrix ${inDim}x${outDim} ${dt} ${layout}`);
                  assert.equal(got.pruned, Math.floor(inDim * outDim * sparsity));
                }
              }
            }
          }
        }
      });
    }
  }
});
