// The replicas of a stage split the writing of a block's weights: each writes its own byte range
// of the weights taken one after another, and together they write every byte once.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { weightShare, writeWeights } from "../../services/worker/src/control/weightWrites.js";
import { ShardError } from "../../services/worker/src/errors.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("weight-writes");
after(() => tmp.cleanup());

// Three weights of 10, 7 and 5 bytes, at regions out of order in a 40-byte file.
const weights = [
  { name: "a", bytes: Uint8Array.from({ length: 10 }, (_, i) => 0x10 + i) },
  { name: "b", bytes: Uint8Array.from({ length: 7 }, (_, i) => 0x30 + i) },
  { name: "c", bytes: Uint8Array.from({ length: 5 }, (_, i) => 0x50 + i) },
];
const regions = new Map([["a", { offset: 20, length: 10 }], ["b", { offset: 2, length: 7 }], ["c", { offset: 32, length: 5 }]]);

async function written(share?: { replica: number; replicas: number }): Promise<number[]> {
  const path = join(tmp.path, `out-${share ? `${share.replica}of${share.replicas}` : "all"}.bin`);
  await writeFile(path, Buffer.alloc(40, 0xee));
  const h = await open(path, "r+");
  try {
    await writeWeights(h, weights, regions, () => {}, share);
  } finally {
    await h.close();
  }
  return [...(await readFile(path))];
}

test("shares of 22 bytes over 3 replicas: [0, 7), [7, 14), [14, 22), by hand", () => {
  assert.deepEqual([0, 1, 2].map((replica) => weightShare(22, { replica, replicas: 3 })), [{ from: 0, to: 7 }, { from: 7, to: 14 }, { from: 14, to: 22 }]);
  assert.deepEqual(weightShare(22, undefined), { from: 0, to: 22 });
});

test("each replica writes only its range; together they write what one writer does, each byte once", async () => {
  const whole = await written();
  for (const replicas of [2, 3, 5]) {
    const parts = await Promise.all(Array.from({ length: replicas }, (_, replica) => written({ replica, replicas })));
    for (let i = 0; i < 40; i++) {
      const writers = parts.filter((p) => p[i] !== 0xee);
      assert.ok(writers.length <= 1, `byte ${i} written by ${writers.length} of ${replicas} replicas`);
      assert.equal(writers[0]?.[i] ?? 0xee, whole[i], `byte ${i}, ${replicas} replicas`);
    }
  }
  // Replica 1 of 3 writes bytes [7, 14): a[7..9] at 27..29 and b[0..3] at 2..5.
  const one = await written({ replica: 1, replicas: 3 });
  assert.deepEqual(one.map((v, i) => (v === 0xee ? -1 : i)).filter((i) => i >= 0), [2, 3, 4, 5, 27, 28, 29]);
});

test("a weight with no region, or of another size, is refused naming the tensor", async () => {
  const h = await open(join(tmp.path, "bad.bin"), "w+");
  try {
    await assert.rejects(writeWeights(h, weights, new Map([...regions].slice(1)), () => {}), (e: unknown) => e instanceof ShardError && /tensor "a"/.test(e.message));
    await assert.rejects(writeWeights(h, weights, new Map([...regions, ["c", { offset: 32, length: 6 }]]), () => {}), (e: unknown) => e instanceof ShardError && /tensor "c".*5 bytes/.test(e.message));
  } finally {
    await h.close();
  }
});
