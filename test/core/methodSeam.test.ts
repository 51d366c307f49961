// The method seam: the BlockEngine runs any Method (pool rule + accumulators + compress) and a
// profile's dense pre-pass without knowing which it runs; the registry names the methods.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { analyzeModel } from "../../services/core/src/pipeline/modelAnalysis.js";
import { loadSamples } from "../../services/core/src/pipeline/pruneModel.js";
import { resolveSpec, type PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { SampleFeeds } from "../../services/core/src/pipeline/sampleFeeds.js";
import { BlockEngine, type SampleState } from "../../services/core/src/pipeline/blockEngine.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { InferenceHost } from "../../services/core/src/runtime/inferenceHost.js";
import { createMethod, methodDefinition, methodNames, needsCalibration, type Accumulator, type AccumulatorInput, type Method } from "../../services/core/src/methods/index.js";
import { ATTENDED_TOKENS } from "../../services/core/src/methods/tokenPools.js";
import { profileNames, sparsityProfile, type ProfilePrePass, type SparsityProfile } from "../../services/core/src/profiles/index.js";
import { profileTargets } from "../../services/core/src/pipeline/profilePhase.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";
import { planJob, planTargets } from "../../services/core/src/plan/jobPlan.js";
import { tempDir } from "../support/fixtures.js";
import { create } from "@bufbuild/protobuf";
import { JobSpecSchema } from "../../services/gen/atvprune/v1/job_pb.js";
import { toPruneSpec } from "../../services/rpc/jobSpec.js";

const tmp = tempDir("method-seam");
after(() => tmp.cleanup());
let model: { model: string; calib: string };

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 2, hidden: 64, samples: 4, seqLen: 24, imageTokens: 8, seed: 3 });
  model = { model: g.modelPath, calib: g.calibPath };
});

/** An engine over the generated model, as pruneModel builds it, closed by the returned function. */
function openEngine(spec: Partial<PruneSpec>, extra: { method?: Method; targets?: Map<string, number>; accumulatorBudgetBytes?: number } = {}) {
  const resolved = resolveSpec({ ...model, out: join(tmp.path, "unused"), method: "wanda", sparsity: 0.5, threads: 1, ...spec } as PruneSpec, 1);
  const analysis = analyzeModel(resolved.model);
  const data = new TensorData(analysis.loaded);
  const targets = extra.targets ?? planTargets(planJob(resolved, analysis, data));
  const samples = loadSamples(resolved, analysis);
  const host = InferenceHost.start({ threads: 1, device: "cpu" });
  const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
  const engine = new BlockEngine({ ...analysis, data, spec: resolved, host, samples, feeds, ...extra, targets });
  return { engine, analysis, samples, close: async () => { await host.close(); await data.close(); } };
}

function sameStates(a: readonly SampleState[], b: readonly SampleState[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((s, j) => [...s].every(([name, t]) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).equals(Buffer.from(b[j]!.get(name)!.data.buffer, b[j]!.get(name)!.data.byteOffset, b[j]!.get(name)!.data.byteLength))));
}

test("the registry names every method once and refuses an unknown one, listing the known ones", () => {
  assert.deepEqual(methodNames(), ["atv", "wanda", "magnitude", "sparsegpt", "atv-sparsegpt", "tamp"]);
  assert.equal(needsCalibration("magnitude"), false);
  assert.equal(needsCalibration("wanda"), true);
  assert.throws(() => methodDefinition("sparsegtp"), (e: unknown) => e instanceof InvalidArgumentError && /must be atv, wanda, magnitude, sparsegpt, atv-sparsegpt or tamp, got "sparsegtp"/.test(e.message));
  assert.deepEqual(methodDefinition("atv").shownOptions, ["alpha"]);
  assert.deepEqual(profileNames(), ["uniform", "owl", "das"]);
});

test("magnitude's option check lives in its own file and still refuses matrix scope with N:M", () => {
  assert.throws(() => resolveSpec({ model: "m", out: "o", method: "magnitude", pattern: "2:4" }, 1), /one threshold per matrix is unstructured/);
  assert.doesNotThrow(() => resolveSpec({ model: "m", out: "o", method: "magnitude", pattern: "2:4", magnitudeScope: "column" }, 1));
});

test("the uniform profile gives every selected linear the job's sparsity and needs no pre-pass", () => {
  const p = sparsityProfile("uniform");
  assert.equal(p.prePass, undefined);
  const linears = [[{ weight: "a" }, { weight: "b" }], [{ weight: "c" }]] as never;
  assert.deepEqual([...p.targets({ sparsity: 0.3, linears, facts: [] })], [["a", 0.3], ["b", 0.3], ["c", 0.3]]);
});

test("a method from outside the registry plugs in: accumulators fed in sample order, shared per key; per-linear targets reach compress; new weights are written", async () => {
  const adds: { key: string; index: number; pooled: number }[] = [];
  const targets = new Map<string, number>();
  const seenTargets = new Map<string, number>();
  class Recorder implements Accumulator {
    constructor(readonly key: string) {}
    add(s: AccumulatorInput): void { adds.push({ key: this.key, index: s.index, pooled: s.pool.reduce((a, x) => a + x, 0) }); }
  }
  const halve: Method<Recorder> = {
    name: "halve",
    calibration: { pool: ATTENDED_TOKENS, accumulator: (l) => ({ key: l.activation, create: () => new Recorder(l.activation) }) },
    compress({ weight, stats, target, linear }) {
      assert.ok(stats instanceof Recorder);
      seenTargets.set(linear.weight, target.sparsity);
      // New weights: every float32 entry halved (no entry pruned).
      const f = new Float32Array(weight.bytes.slice().buffer);
      for (let i = 0; i < f.length; i++) f[i]! /= 2;
      return { kind: "weights", bytes: new Uint8Array(f.buffer), pruned: 0, facts: { halved: f.length } };
    },
  };
  const probe = openEngine({});
  const linears = probe.analysis.plan.blocks[0]!.weights;
  linears.forEach((l, i) => targets.set(l.weight, 0.1 * (i + 1)));
  await probe.close();

  const { engine, samples, analysis, close } = openEngine({}, { method: halve, targets });
  try {
    const states = await engine.initialStates();
    const dense = analysis.plan.blocks[0]!.weights;
    const result = await engine.runBlock(0, states);
    const keys = [...new Set(dense.map((l) => l.activation))];
    // Every key once per sample, samples in order; pools are the attended tokens.
    assert.equal(adds.length, keys.length * samples.length);
    for (const key of keys) {
      assert.deepEqual(adds.filter((a) => a.key === key).map((a) => a.index), samples.map((_, j) => j));
      assert.deepEqual(adds.filter((a) => a.key === key).map((a) => a.pooled), samples.map((s) => s.attentionMask.reduce((a, x) => a + x, 0)));
    }
    assert.deepEqual(seenTargets, targets);
    for (const layer of result.layers) {
      assert.equal(layer.targetSparsity, targets.get(layer.weight));
      assert.deepEqual(layer.facts, { halved: layer.params });
    }
    const reader = new TensorData(analysis.loaded);
    const before = await reader.read(analysis.index.initializers.get(result.weights[0]!.name)!);
    await reader.close();
    const a = new Float32Array(before.slice().buffer);
    const b = new Float32Array(result.weights[0]!.bytes.slice().buffer);
    assert.ok(a.some((x) => x !== 0));
    assert.deepEqual(b, a.map((x) => x / 2));
  } finally {
    await close();
  }
});

test("the registry's methods give the same bits through an explicit Method as by name", async () => {
  const byName = openEngine({ method: "atv", alpha: 2 });
  const explicit = openEngine({ method: "atv", alpha: 2 }, { method: createMethod({ method: "atv", alpha: 2, magnitudeScope: "matrix", pattern: { kind: "unstructured" }, patternText: "unstructured" }) });
  try {
    const r1 = await byName.engine.runBlock(0, await byName.engine.initialStates());
    const r2 = await explicit.engine.runBlock(0, await explicit.engine.initialStates());
    assert.deepEqual(r1.weights.map((w) => Buffer.from(w.bytes)), r2.weights.map((w) => Buffer.from(w.bytes)));
    assert.ok(r1.report.cosDistAvg !== null && r1.report.k.length === 4);
    assert.ok(sameStates(r1.next, r2.next));
  } finally {
    await byName.close();
    await explicit.close();
  }
});

test("a profile's pre-pass runs the dense forward with its accumulators and propagates densely", async () => {
  const seen: number[] = [];
  const prePass: ProfilePrePass = {
    pool: ATTENDED_TOKENS,
    accumulator: (l) => ({ key: l.activation, create: () => ({ add: (s: AccumulatorInput) => { seen.push(s.index); } }) }),
    blockFacts: ({ block, linears, stats, weights, samples }) => [block, linears.length, stats.size, weights.size, samples],
  };
  const pre = openEngine({ propagation: "dense" });
  const dense = openEngine({ propagation: "dense" });
  try {
    const s0 = await pre.engine.initialStates();
    const { facts, next } = await pre.engine.prePassBlock(0, s0, prePass);
    const n = pre.analysis.plan.blocks[0]!.weights.length;
    assert.deepEqual(facts, [0, n, n, n, 4]);
    assert.ok(seen.length > 0 && seen.length % 4 === 0);
    // Dense propagation of a pruning run emits the dense forward's states: the same as the pre-pass.
    const pruned = await dense.engine.runBlock(0, await dense.engine.initialStates());
    assert.ok(sameStates(next, pruned.next));
    // The pre-pass chains: block 1 runs on block 0's dense output.
    const { facts: f1 } = await pre.engine.prePassBlock(1, next, prePass);
    assert.equal(f1[0], 1);
  } finally {
    await pre.close();
    await dense.close();
  }
});

test("tamp resolves its own DAS profile; the wire JobSpec carries --tamp-max-sparsity", () => {
  assert.equal(resolveSpec({ model: "m", calib: "c", out: "o", method: "tamp" }, 1).sparsityProfile, "das");
  assert.equal(toPruneSpec(create(JobSpecSchema, { model: "m", calib: "c", out: "o", method: "tamp", sparsity: 0.5, tampMaxSparsity: 0.58 })).tampMaxSparsity, 0.58);
  assert.equal(toPruneSpec(create(JobSpecSchema, { model: "m", calib: "c", out: "o", method: "tamp", sparsity: 0.5 })).tampMaxSparsity, undefined);
});

test("accumulators over the budget: one dense forward per group, each group compressed before the next is created", async () => {
  // A method whose every key claims 1000 bytes, with a budget of 1500: one key per group.
  const log: string[] = [];
  class Tally implements Accumulator {
    constructor(readonly key: string) { log.push(`create ${key}`); }
    add(): void {}
  }
  const tally: Method<Tally> = {
    name: "tally",
    calibration: { pool: ATTENDED_TOKENS, accumulator: (l) => ({ key: l.activation, bytes: 1000, create: () => new Tally(l.activation) }) },
    compress({ weight, stats, linear }) {
      log.push(`compress ${stats!.key} ${linear.weight}`);
      return { kind: "mask", mask: new Uint8Array(weight.inDim * weight.outDim), pruned: 0 };
    },
  };
  const runs: string[][] = [];
  for (const budget of [undefined, 1500]) {
    log.length = 0;
    const { engine, analysis, close } = openEngine({}, { method: tally, accumulatorBudgetBytes: budget });
    try {
      const result = await engine.runBlock(0, await engine.initialStates());
      assert.deepEqual(result.layers.map((l) => l.weight), analysis.plan.blocks[0]!.weights.map((l) => l.weight), "layers in block order");
      runs.push([...log]);
    } finally {
      await close();
    }
  }
  const [together, grouped] = runs as [string[], string[]];
  const keys = together.filter((e) => e.startsWith("create ")).length;
  assert.ok(keys > 1);
  // Without a budget every accumulator exists before any compress; with it, they alternate.
  assert.ok(together.slice(0, keys).every((e) => e.startsWith("create ")));
  const order = grouped.map((e) => e.split(" ")[0]);
  assert.deepEqual(order.filter((e, i) => e !== order[i - 1]), Array.from({ length: keys }, () => ["create", "compress"]).flat());
});

test("the profile phase: a dense pre-pass over every block in order, facts per block, then per-linear targets the pruning phase uses", async () => {
  const order: number[] = [];
  const profile: SparsityProfile = {
    name: "test-steps",
    prePass: {
      pool: ATTENDED_TOKENS,
      accumulator: (l) => ({ key: l.activation, create: () => ({ add: () => {} }) }),
      blockFacts: ({ block }) => { order.push(block); return [block]; },
    },
    // Later blocks pruned more: 0.2, 0.4, ... from the facts each block reported.
    targets: ({ linears, facts }) => new Map(linears.flatMap((ls, b) => ls.map((l) => [l.weight, 0.2 * (facts[b]![0]! + 1)] as const))),
  };
  const probe = openEngine({});
  const linears = probe.analysis.partition.blockLinears;
  try {
    const targets = await profileTargets(probe.engine, profile, { sparsity: 0.5, linears });
    assert.deepEqual(order, [0, 1]);
    for (const [b, ls] of linears.entries()) for (const l of ls) assert.equal(targets.get(l.weight), 0.2 * (b + 1));
    const { engine, close } = openEngine({}, { targets: new Map(targets) });
    try {
      const r = await engine.runBlock(1, (await engine.runBlock(0, await engine.initialStates())).next);
      for (const layer of r.layers) {
        assert.equal(layer.targetSparsity, 0.4);
        assert.equal(layer.pruned, Math.floor(layer.shape[0] * 0.4) * layer.shape[1]);
      }
    } finally {
      await close();
    }
  } finally {
    await probe.close();
  }
});
