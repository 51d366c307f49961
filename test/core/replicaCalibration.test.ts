/**
 * Data-parallel calibration (issue 10 §1) inside one process: R replicas each calibrate and
 * propagate their share of the samples and exchange per-sample records; the pruned weights and
 * every fact of report.json are the bits of one replica, for every R.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { LocalExchangeHub, replicaOfSample, replicaSamples } from "../../services/core/src/index.js";
import { ChannelSquares } from "../../services/core/src/methods/channelSquares.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("replica-calibration");
let model: { model: string; calib: string };
let counter = 0;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 3, hidden: 64, samples: 7, seqLen: 32, imageTokens: 12, seed: 11 });
  model = { model: g.modelPath, calib: g.calibPath };
});
after(() => tmp.cleanup());

async function run(method: string, propagation: "sequential" | "dense", replicas: number, stats: "host" | "graph" = "host", extra: Record<string, unknown> = {}) {
  const out = join(tmp.path, `o${++counter}`);
  const report = await pruneModel({ ...model, out, method, propagation, sparsity: 0.5, alpha: 2, threads: 1, stats, ...extra }, { replicas });
  return { data: readFileSync(join(out, "model.onnx.data")), layers: report.layers, blocks: report.blocks.map((b) => ({ ...b, seconds: 0, tokensPerSecond: 0 })) };
}

for (const method of ["atv", "wanda"]) {
  for (const propagation of ["sequential", "dense"] as const) {
    test(`${method}, ${propagation}: 2, 3 and 7 replicas give the bits of one`, async () => {
      const one = await run(method, propagation, 1);
      for (const replicas of [2, 3, 7]) {
        const many = await run(method, propagation, replicas);
        assert.ok(many.data.equals(one.data), `${replicas} replicas: weights differ`);
        assert.deepEqual(many.layers, one.layers);
        assert.deepEqual(many.blocks, one.blocks);
      }
      if (method === "atv") assert.ok(one.blocks.some((b) => b.k.some((k) => k > 0)), "the pools hold visual tokens");
    });
  }
  test(`${method}, --stats graph: 2 and 3 replicas give the bits of one`, async () => {
    const one = await run(method, "sequential", 1, "graph");
    for (const replicas of [2, 3]) {
      const many = await run(method, "sequential", replicas, "graph");
      assert.ok(many.data.equals(one.data), `${replicas} replicas: weights differ`);
      assert.deepEqual(many.layers, one.layers);
      assert.deepEqual(many.blocks, one.blocks);
    }
  });
}

for (const method of ["sparsegpt", "atv-sparsegpt", "tamp"]) {
  test(`${method}, sequential: 2 and 3 replicas give the bits of one (per-sample Hessians / AMIA sums exchanged)`, async () => {
    const one = await run(method, "sequential", 1);
    for (const replicas of [2, 3]) {
      const many = await run(method, "sequential", replicas);
      assert.ok(many.data.equals(one.data), `${replicas} replicas: weights differ`);
      assert.deepEqual(many.layers, one.layers);
      assert.deepEqual(many.blocks, one.blocks);
    }
  });
}

for (const [method, pattern] of [["atv", "2:4"], ["sparsegpt", "4:8"], ["atv-sparsegpt", "2:4"]] as const) {
  test(`${method} ${pattern}: 2 and 3 replicas, each compressing its share of a block's linears, give the bits of one`, async () => {
    const one = await run(method, "sequential", 1, "host", { pattern });
    for (const replicas of [2, 3]) {
      const many = await run(method, "sequential", replicas, "host", { pattern });
      assert.ok(many.data.equals(one.data), `${replicas} replicas: weights differ`);
      assert.deepEqual(many.layers, one.layers);
    }
  });
}

test("sparsegpt in Hessian groups (a small accumulator budget): 2 replicas give the bits of one", async () => {
  const at = async (replicas: number) => {
    const out = join(tmp.path, `o${++counter}`);
    // Budget 1 byte: one input's Hessian per dense forward, each group exchanged under its own topic.
    await pruneModel({ ...model, out, method: "sparsegpt", sparsity: 0.5, threads: 1 }, { replicas, accumulatorBudgetBytes: 1 });
    return readFileSync(join(out, "model.onnx.data"));
  };
  assert.ok((await at(2)).equals(await at(1)));
});

test("magnitude reads no samples: more than one replica is refused, naming replicas", async () => {
  await assert.rejects(pruneModel({ ...model, out: join(tmp.path, `o${++counter}`), method: "magnitude", sparsity: 0.5, threads: 1 }, { replicas: 2 }), /replicas: method magnitude cannot be split over replicas \(it reads no calibration samples/);
});

test("samples split into contiguous shares that differ by at most one, in replica order", () => {
  assert.deepEqual([0, 1, 2].map((r) => replicaSamples(8, 3, r)), [{ first: 0, end: 3 }, { first: 3, end: 6 }, { first: 6, end: 8 }]);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((j) => replicaOfSample(8, 3, j)), [0, 0, 0, 1, 1, 1, 2, 2]);
  assert.throws(() => replicaSamples(2, 3, 0), /3 replicas for 2 calibration samples/);
  assert.throws(() => replicaSamples(4, 2, 2), /replica.*\[0, 2\)/);
});

test("channel squares: each sample's own sums, then added in sample order; a replica's reduce gives the same bits", async () => {
  // Sample 0: tokens [1, 2], [3, 4] (both pooled); sample 1: [0.1, 0.2], [5, 6] (second pooled).
  const a = (v: number[]) => ({ type: "float32" as const, dims: [1, 2, 2], data: new Float32Array(v) });
  const s0 = { index: 0, input: a([1, 2, 3, 4]), pool: new Uint8Array([1, 1]), subject: "s0" };
  const s1 = { index: 1, input: a([0.1, 0.2, 5, 6]), pool: new Uint8Array([0, 1]), subject: "s1" };
  const one = new ChannelSquares("x", 2);
  one.add(s0);
  assert.deepEqual([...one.record(0)], [1 + 9, 4 + 16]);
  one.add(s1);
  assert.deepEqual([...one.record(1)], [25, 36]);
  assert.deepEqual([...one.mean(2)], [(10 + 25) / 2, (20 + 36) / 2]);
  // Replica 1 saw only sample 1; after the exchange it holds every sample's sums, in order.
  const other = new ChannelSquares("x", 2);
  other.add(s1);
  const hub = new LocalExchangeHub(2, 2);
  const [g0, g1] = await Promise.all([
    hub.member(0).allGather(0, "stats", new Map([[0, [new Float64Array([10, 20])]]])),
    hub.member(1).allGather(0, "stats", new Map([[1, [other.record(1)]]])),
  ]);
  assert.deepEqual(g0, g1);
  other.reduce(g1!.map((r) => r[0]!));
  assert.deepEqual([...other.mean(2)], [...one.mean(2)]);
  assert.throws(() => other.record(1), /last sample added is none/);
});
