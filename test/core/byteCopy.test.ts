/**
 * runCopier copies exactly what TypedArray.set copies, for views at offsets into ordinary and
 * shared buffers alike, and refuses a run that does not fit as set does.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { runCopier } from "../../services/core/src/prune/byteCopy.js";

function view(shared: boolean, bytes: number, offset: number, length: number, seed: number): Uint8Array {
  const v = new Uint8Array(shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes), offset, length);
  for (let i = 0; i < v.length; i++) v[i] = (i * 31 + seed) & 0xff;
  return v;
}

describe("runCopier", () => {
  for (const [srcShared, dstShared] of [[false, false], [false, true], [true, false], [true, true]] as const) {
    test(`${srcShared ? "shared" : "plain"} -> ${dstShared ? "shared" : "plain"}: the bytes set copies, nothing else`, () => {
      const src = view(srcShared, 4096, 40, 3000, 7);
      const dst = view(dstShared, 4096, 24, 3500, 200);
      const expected = Uint8Array.from(dst);
      const runs: Array<[number, number, number]> = [[0, 0, 100], [17, 3001, 499], [2999, 5, 1], [1000, 1200, 0], [2000, 2500, 1000]];
      const copy = runCopier(src, dst);
      for (const [from, to, length] of runs) {
        expected.set(src.subarray(from, from + length), to);
        copy(from, to, length);
      }
      assert.deepEqual(Uint8Array.from(dst), expected);
      // The bytes around the views are untouched.
      const whole = new Uint8Array(dst.buffer);
      for (let i = 0; i < 24; i++) assert.equal(whole[i], 0);
      for (let i = 24 + 3500; i < 4096; i++) assert.equal(whole[i], 0);
    });

    test(`${srcShared ? "shared" : "plain"} -> ${dstShared ? "shared" : "plain"}: a run out of bounds throws RangeError`, () => {
      const copy = runCopier(view(srcShared, 256, 16, 100, 1), view(dstShared, 256, 8, 120, 2));
      assert.throws(() => copy(90, 0, 11), RangeError);
      assert.throws(() => copy(0, 110, 11), RangeError);
      assert.throws(() => copy(-1, 0, 5), RangeError);
      assert.doesNotThrow(() => copy(90, 110, 10));
    });
  }
});
