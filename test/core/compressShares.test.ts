/**
 * The compress step shared out between replicas (pipeline/compressShares.ts): which replica
 * compresses which linear, worked out by hand, and a compression's round trip through its
 * exchange record. (That R replicas sharing it out give the bits of one process is
 * replicaCalibration.test.ts and the cluster tests.)
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  compressionFromRecord, compressionRecord, compressShares, packMaskBits, unpackMaskBits,
} from "../../services/core/src/pipeline/compressShares.js";
import type { LinearInfo } from "../../services/core/src/graph/linears.js";
import { GraphError } from "../../services/core/src/errors.js";

function linear(inDim: number, outDim: number): LinearInfo {
  return { nodeIndex: 0, node: "n", op: "MatMul", weight: "w", activation: "x", dataType: 1, layout: "in_out", inDim, outDim };
}

test("shares: the longest first to the least loaded replica, ties to the lower one; each replica's linears contiguous", () => {
  // q, k, v, o (4 each) and gate, up, down (11 each), as a block's entries in units of 1024²/4.
  const costs = [4, 4, 4, 4, 11, 11, 11];
  // R = 2: gate -> 0 (11), up -> 1 (11), down -> 0 (22, a tie goes to 0), q -> 1 (15), k -> 1 (19),
  // v -> 1 (23), o -> 0 (26 against 23).
  assert.deepEqual(compressShares(costs, 2), { order: [3, 4, 6, 0, 1, 2, 5], bounds: [0, 3, 7] });
  // R = 3: gate, up, down one each (11), then q, k, v one each (15), then o -> 0 (19).
  assert.deepEqual(compressShares(costs, 3), { order: [0, 3, 4, 1, 5, 2, 6], bounds: [0, 3, 5, 7] });
  // Equal costs: in index order, round robin.
  assert.deepEqual(compressShares([1, 1, 1], 2), { order: [0, 2, 1], bounds: [0, 2, 3] });
});

test("shares: none for one replica, or for fewer linears than replicas (every replica compresses them all)", () => {
  assert.equal(compressShares([1, 2, 3], 1), undefined);
  assert.equal(compressShares([1, 2, 3], 4), undefined);
  assert.deepEqual(compressShares([5, 1, 3, 2], 4)?.bounds, [0, 1, 2, 3, 4]);
});

test("mask bits: bit i of byte i >> 3 from the low bit, set for any non-zero entry; every tail length", () => {
  assert.deepEqual([...packMaskBits(Uint8Array.of(1, 0, 0, 1, 0, 0, 0, 0, 1, 1))], [0b1001, 0b11]);
  // Non-zero bytes other than 1 (applyMask prunes for any), in every position of a word.
  assert.deepEqual([...packMaskBits(Uint8Array.of(2, 0x80, 0, 0xff, 0x7f, 0, 0x81, 0))], [0b01011011]);
  for (let n = 0; n <= 41; n++) {
    const mask = Uint8Array.from({ length: n }, (_, i) => ((i * 7) % 5 === 1 ? 1 + (i % 200) : 0));
    const back = unpackMaskBits(packMaskBits(mask), n);
    assert.deepEqual([...back], [...mask].map((m) => (m !== 0 ? 1 : 0)), `n = ${n}`);
  }
  // Views at an offset that is not a whole word take the entry-at-a-time path, same bits.
  const buffer = new Uint8Array(19);
  buffer.set([0, 1, 1, 0, 0, 0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0], 1);
  const view = buffer.subarray(1);
  assert.deepEqual([...packMaskBits(view)], [0b10000110, 0b1, 0b1]);
  const into = new Uint8Array(19).subarray(1);
  assert.equal(unpackMaskBits(Uint8Array.of(0b10000110, 0b1, 0b1), 18, into), into);
  assert.deepEqual([...into], [0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
});

test("records: a mask and new weights come back as they went, with their facts (NaN included)", () => {
  const l = linear(3, 5);
  const mask = Uint8Array.from({ length: 15 }, (_, i) => (i % 3 === 0 ? 1 : 0));
  const m = compressionFromRecord(compressionRecord({ kind: "mask", mask, pruned: 5 }), l, 4);
  assert.deepEqual(m, { kind: "mask", mask, pruned: 5 });
  const bytes = Uint8Array.from({ length: 30 }, (_, i) => (i * 37) & 255);
  const facts = { relativeError: 0.125, odd: Number.NaN, "a \"name\"": -0 };
  const w = compressionFromRecord(compressionRecord({ kind: "weights", bytes, pruned: 7, facts }), l, 2);
  assert.equal(w.kind, "weights");
  assert.deepEqual(w.kind === "weights" ? [...w.bytes] : [], [...bytes]);
  assert.equal(w.pruned, 7);
  assert.ok(Object.is(w.facts!["a \"name\""], -0) && Number.isNaN(w.facts!.odd) && w.facts!.relativeError === 0.125);
  // A record is a copy: the mask buffer may be reused for the next block once it is made.
  const record = compressionRecord({ kind: "mask", mask, pruned: 5 });
  mask.fill(0);
  const again = compressionFromRecord(record, l, 4, (n) => new Uint8Array(n));
  assert.equal(again.kind === "mask" ? again.mask.reduce((a, b) => a + b, 0) : -1, 5);
});

test("records: one that does not fit its linear is a GraphError naming the weight", () => {
  const record = compressionRecord({ kind: "mask", mask: new Uint8Array(15), pruned: 0 });
  assert.throws(() => compressionFromRecord(record, linear(4, 5), 4), (e) => e instanceof GraphError && /w: the exchanged compression is a mask of 15 entries for 20/.test(e.message));
  const weights = compressionRecord({ kind: "weights", bytes: new Uint8Array(60), pruned: 0 });
  assert.throws(() => compressionFromRecord(weights, linear(3, 5), 2), (e) => e instanceof GraphError && /holds 60 bytes for 15 entries of 2 bytes/.test(e.message));
  assert.throws(() => compressionFromRecord(record.slice(0, 3), linear(3, 5), 4), /has 3 parts, not 4/);
});
