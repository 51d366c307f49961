/**
 * The Cholesky kernel (prune/choleskyKernelWasm.ts) by hand, and against the scalar chains it
 * replaces: each entry j..j+3 of the rows first, first + stride, ... less its dot product with
 * the head rows over k < j, the terms in k order. prepareHessian's factor (which runs on it) is
 * checked against the reference code in sparseGptBlocked.test.ts and against the factorization
 * teams in solvePool.test.ts; here: that it does run there, and what it leaves alone.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";
import { CHOLESKY_MAX_BYTES, CHOL_ROWS, CholeskyKernel, choleskyLayout, choleskyMemory } from "../../services/core/src/prune/choleskyKernelWasm.js";

const bits = (a: Float64Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

function kernelFor(n: number, members = 1, rank = 0): CholeskyKernel {
  const memory = choleskyMemory(n, members);
  assert.ok(memory, "WebAssembly SIMD is there on Node 24: the kernel must run");
  const kernel = CholeskyKernel.over(memory, rank);
  assert.ok(kernel);
  return kernel;
}

/** The scalar loop's chains, on a copy: groups of CHOL_ROWS rows from `first`, every `stride` rows. */
function scalarSums(a: Float64Array, n: number, j: number, first: number, stride: number): Float64Array {
  const out = a.slice();
  for (let i = first; i < n; i += stride) {
    for (let r = i; r < Math.min(i + CHOL_ROWS, n); r++) {
      for (let c = 0; c < 4; c++) {
        let v = out[r * n + j + c]!;
        for (let k = 0; k < j; k++) v -= out[r * n + k]! * out[(j + c) * n + k]!;
        out[r * n + j + c] = v;
      }
    }
  }
  return out;
}

describe("Cholesky kernel", () => {
  test("by hand: rows 8 and 9 of a 10x10 matrix at step 4", () => {
    const n = 10;
    const k = kernelFor(n);
    const a = k.matrix;
    a.fill(0);
    // Head rows 4..7, entries k < 4: row 4+c is (c+1, 1, 0, 2).
    for (let c = 0; c < 4; c++) a.set([c + 1, 1, 0, 2], (4 + c) * n);
    // Row 8: entries 0..3 (1, 2, 3, 1), entries 4..7 (100, 200, 300, 400); row 9: (0, 0, 1, -1), (5, 5, 5, 5).
    a.set([1, 2, 3, 1, 100, 200, 300, 400], 8 * n);
    a.set([0, 0, 1, -1, 5, 5, 5, 5], 9 * n);
    assert.equal(CHOL_ROWS, 4);
    k.subtractHead(4, 8, 4);
    // Row 8 · head row c = (c+1)·1 + 1·2 + 0·3 + 2·1 = c + 5.
    assert.deepEqual([...a.subarray(8 * n + 4, 8 * n + 8)], [95, 194, 293, 392]);
    // Row 9 · head row c = 0 + 0 + 0 + 2·(-1) = -2.
    assert.deepEqual([...a.subarray(9 * n + 4, 9 * n + 8)], [7, 7, 7, 7]);
    // The head rows, the rows' earlier entries and the entries past j+3 are not touched.
    assert.deepEqual([...a.subarray(8 * n, 8 * n + 4)], [1, 2, 3, 1]);
    assert.deepEqual([...a.subarray(4 * n, 4 * n + 4)], [1, 1, 0, 2]);
    assert.equal(a[8 * n + 8], 0);
  });

  test("step 0 (no terms), a group cut short by the last row, and a member's rows only", () => {
    const n = 13;
    const k = kernelFor(n, 2, 1);
    const rand = mulberry32(5);
    for (let i = 0; i < n * n; i++) k.matrix[i] = rand() - 0.5;
    const before = k.matrix.slice();
    k.subtractHead(0, 4, 4);
    assert.ok(bits(k.matrix).equals(bits(before)), "no k < 0 terms: nothing changes");
    // Member 1 of 2 at step 4: groups of four from row 12 (8 + 4), every 8 rows: row 12 alone (13 is past n).
    k.subtractHead(4, 12, 8);
    const want = scalarSums(before, n, 4, 12, 8);
    assert.ok(bits(k.matrix).equals(bits(want)));
    for (const row of [8, 9, 10, 11]) assert.ok(bits(k.matrix.subarray(row * n, row * n + n)).equals(bits(before.subarray(row * n, row * n + n))), `row ${row} is the other member's`);
    // One member: rows 8..11, then 12 alone.
    const again = k.matrix.slice();
    k.subtractHead(4, 8, 4);
    assert.ok(bits(k.matrix).equals(bits(scalarSums(again, n, 4, 8, 4))));
    // Groups of two and of three rows at the end (n = 10 and 11 from row 8).
    for (const m of [10, 11]) {
      const small = kernelFor(m);
      for (let i = 0; i < m * m; i++) small.matrix[i] = rand() - 0.5;
      const start = small.matrix.slice();
      small.subtractHead(4, 8, 4);
      assert.ok(bits(small.matrix).equals(bits(scalarSums(start, m, 4, 8, 4))), `${m} rows`);
    }
  });

  test("the scalar chains' bits on values whose sums round, every step of a 61-wide matrix", () => {
    const n = 61;
    const k = kernelFor(n);
    const rand = mulberry32(17);
    for (let i = 0; i < n * n; i++) k.matrix[i] = (rand() - 0.5) * 2 ** Math.floor(rand() * 40 - 20);
    for (let j = 0; j + 4 <= n; j += 4) {
      const want = scalarSums(k.matrix, n, j, j + 4, 4);
      k.subtractHead(j, j + 4, 4);
      assert.ok(bits(k.matrix).equals(bits(want)), `step ${j}`);
    }
  });

  test("the memory's layout: both matrices up to ~16380 inputs (4 GiB), the working one alone up to ~23170, then none (the scalar loops run)", () => {
    assert.equal(CHOLESKY_MAX_BYTES, 2 ** 32);
    assert.equal(choleskyMemory(0, 1), null);
    const scratch = (n: number, members: number) => 8 * members * 4 * n;
    assert.deepEqual(choleskyLayout(14336, 2), { bytes: 2 * 14336 * 14336 * 8 + scratch(14336, 2), inverse: true });
    assert.deepEqual(choleskyLayout(16382, 2), { bytes: 2 * 16382 * 16382 * 8 + scratch(16382, 2), inverse: true });
    assert.deepEqual(choleskyLayout(16383, 2), { bytes: 16383 * 16383 * 8 + scratch(16383, 2), inverse: false });
    assert.deepEqual(choleskyLayout(23166, 2), { bytes: 23166 * 23166 * 8 + scratch(23166, 2), inverse: false });
    assert.equal(choleskyLayout(23167, 2), null);
    const small = choleskyMemory(64, 3);
    assert.ok(small?.inverse);
    assert.equal(small.memory.buffer.byteLength, Math.ceil((2 * 64 * 64 * 8 + scratch(64, 3)) / 65536) * 65536);
  });

  test("four rows added to one and to two others, each entry's terms in order, an odd width's last entry left to the caller", () => {
    const n = 21;
    const k = kernelFor(n);
    assert.ok(k.inverse);
    const rand = mulberry32(3);
    for (let i = 0; i < n * n; i++) {
      k.matrix[i] = (rand() - 0.5) * 2 ** Math.floor(rand() * 30 - 15);
      k.inverse[i] = (rand() - 0.5) * 2 ** Math.floor(rand() * 30 - 15);
    }
    const c = [0.3, -1.7, 2 ** -20, 5] as const;
    const d = [-0.25, 3.1, 7, -(2 ** 12)] as const;
    // From the matrix's rows 4..7 into the inverse's rows 9 and 12, entries 3..12 (10 of them).
    const want = k.inverse.slice();
    for (let e = 3; e < 13; e++) {
      want[9 * n + e] = want[9 * n + e]! + c[0] * k.matrix[4 * n + e]! + c[1] * k.matrix[5 * n + e]! + c[2] * k.matrix[6 * n + e]! + c[3] * k.matrix[7 * n + e]!;
      want[12 * n + e] = want[12 * n + e]! + d[0] * k.matrix[4 * n + e]! + d[1] * k.matrix[5 * n + e]! + d[2] * k.matrix[6 * n + e]! + d[3] * k.matrix[7 * n + e]!;
    }
    k.addFour(k.inverse, k.matrix, 4 * n, 3, 10, 9 * n, ...c, 12 * n, ...d);
    assert.ok(bits(k.inverse).equals(bits(want)));
    // One row, within one matrix: rows 0..3 into row 15, entries 0..5.
    const one = k.matrix.slice();
    for (let e = 0; e < 6; e++) one[15 * n + e] = one[15 * n + e]! + c[0] * one[e]! + c[1] * one[n + e]! + c[2] * one[2 * n + e]! + c[3] * one[3 * n + e]!;
    k.addFour(k.matrix, k.matrix, 0, 0, 6, 15 * n, ...c, -1, 0, 0, 0, 0);
    assert.ok(bits(k.matrix).equals(bits(one)));
  });

  test("four rows added to four others, each with its own coefficients, the source read once", () => {
    const n = 19;
    const k = kernelFor(n);
    const inv = k.inverse!;
    const rand = mulberry32(11);
    for (let i = 0; i < n * n; i++) inv[i] = (rand() - 0.5) * 2 ** Math.floor(rand() * 30 - 15);
    const c = Float64Array.from({ length: 16 }, () => (rand() - 0.5) * 2 ** Math.floor(rand() * 10 - 5));
    // Rows 2..5 into rows 9..12, entries 1..14 (the source rows' entries past 5 are whatever is there).
    const want = inv.slice();
    for (let q = 0; q < 4; q++) {
      for (let e = 1; e < 15; e++) {
        const t = (9 + q) * n + e;
        want[t] = want[t]! + c[4 * q]! * want[2 * n + e]! + c[4 * q + 1]! * want[3 * n + e]! + c[4 * q + 2]! * want[4 * n + e]! + c[4 * q + 3]! * want[5 * n + e]!;
      }
    }
    k.addFourToFour(inv, inv, 2 * n, 1, 14, 9 * n, c);
    assert.ok(bits(inv).equals(bits(want)));
  });

  test("by hand: the terms in order, (1 + 2^-53) - 1 = 0 where 1 + (2^-53 - 1) would not be", () => {
    const n = 8;
    const k = kernelFor(n);
    const inv = k.inverse!;
    inv.fill(0);
    k.matrix.fill(0);
    // Source rows 0..3, entries 0 and 1: row 0 = 2^-53, row 1 = -1 (rows 2, 3 zero); targets start at 1.
    k.matrix.set([2 ** -53, 2 ** -53], 0);
    k.matrix.set([-1, -1], n);
    inv.set([1, 1], 5 * n);
    inv.set([1, 1], 6 * n);
    k.addFour(inv, k.matrix, 0, 0, 2, 5 * n, 1, 1, 1, 1, 6 * n, 1, 1, 1, 1);
    assert.deepEqual([...inv.subarray(5 * n, 5 * n + 2), ...inv.subarray(6 * n, 6 * n + 2)], [0, 0, 0, 0]);
  });
});
