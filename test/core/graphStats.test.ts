// --stats graph (issue 10 §3): the block's graph computes each sample's pooled sums of squares
// and ATV's per-token cosine distances. They must equal the host's (up to the order of float64
// additions), the masks must agree with --stats host on at least 99.9% of the weights (the
// medium generated model, ATV and Wanda; the builder-exported fixture), and methods whose
// statistics need whole activations must refuse it when the spec is resolved.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../../services/gen/onnx_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { analyzeModel } from "../../services/core/src/pipeline/modelAnalysis.js";
import { buildCutModel } from "../../services/core/src/graph/blockCut.js";
import { addStatsOutputs, planStatsGraph, STATS_POOL_INPUT, type StatsGraph } from "../../services/core/src/graph/statsOutputs.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { ortType } from "../../services/core/src/onnx/dtype.js";
import { loadCalibrationSet } from "../../services/core/src/calib/calibSet.js";
import { SampleFeeds } from "../../services/core/src/pipeline/sampleFeeds.js";
import { InferenceHost } from "../../services/core/src/runtime/inferenceHost.js";
import { ChannelStats } from "../../services/core/src/prune/activationStats.js";
import { cosineDistances } from "../../services/core/src/prune/hiddenState.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { resolveSpec, type PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { checkPlan } from "../../services/core/src/plan/jobPlan.js";
import { fromPlanMessage, toPlanMessage } from "../../services/rpc/jobPlanWire.js";
import { InvalidArgumentError, NumericError } from "../../services/core/src/errors.js";
import type { WireTensor } from "../../services/core/src/runtime/wireTensor.js";
import { FIXTURE_MODEL, tempDir } from "../support/fixtures.js";

const tmp = tempDir("graph-stats");
after(() => tmp.cleanup());

/** Share of the pruned linears' weights whose mask (zero or kept) is the same in both outputs. */
function maskAgreement(a: Buffer, b: Buffer, params: number, bytesPerWeight: number): number {
  assert.equal(a.length, b.length);
  let differ = 0;
  for (let i = 0; i < a.length; i += bytesPerWeight) {
    const zeroA = bytesPerWeight === 4 ? a.readUInt32LE(i) === 0 : a.readUInt16LE(i) === 0;
    const zeroB = bytesPerWeight === 4 ? b.readUInt32LE(i) === 0 : b.readUInt16LE(i) === 0;
    if (zeroA !== zeroB) differ++;
  }
  return 1 - differ / params;
}

async function pruneBoth(name: string, spec: Omit<PruneSpec, "out">) {
  const runs = [];
  for (const stats of ["host", "graph"] as const) {
    const out = join(tmp.path, `${name}-${stats}`);
    const report = await pruneModel({ ...spec, stats, out, threads: 1 });
    runs.push({ report, data: readFileSync(join(out, "model.onnx.data")) });
  }
  return { host: runs[0]!, graph: runs[1]! };
}

describe("the statistics outputs of a block's graph", () => {
  for (const [name, opts] of [["unfused float32", {}], ["fused float16 (residual, delta boundary)", { fused: true, fp16: true }]] as const) {
    test(`${name}: sums of squares and cosine distances equal the host's`, async () => {
      const g = await generateModel({ outDir: join(tmp.path, `cut-${name.split(" ")[0]}`), layers: 2, hidden: 64, samples: 3, seqLen: 24, imageTokens: 8, seed: 3, ...opts });
      const a = analyzeModel(g.modelPath);
      const data = new TensorData(a.loaded);
      const host = InferenceHost.start({ threads: 1, device: "cpu" });
      try {
        const load = async (b: number, stats?: StatsGraph) => {
          const cut = a.plan.blocks[b]!;
          const initializerBytes = new Map<string, Uint8Array>();
          for (const n of cut.initializers) initializerBytes.set(n, await data.read(a.index.initializers.get(n)!));
          const bound: Record<string, WireTensor> = {};
          for (const l of cut.weights) {
            const t = a.index.initializers.get(l.weight)!;
            const bytes = await data.read(t);
            bound[l.weight] = { type: ortType(t.dataType, l.weight), dims: t.dims.map(Number), data: ortType(t.dataType, l.weight) === "float32" ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4) : new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2) };
          }
          const model = buildCutModel({ source: a.loaded.model, index: a.index, cut, initializerBytes, floatType: a.floatType });
          if (stats) addStatsOutputs(model, stats, cut.label);
          return { cut, session: await host.load(cut.label, toBinary(ModelProtoSchema, model), bound) };
        };
        // Block 1: its input is block 0's output (with fused ops a (residual, delta) pair, and so is its output).
        const b = 1;
        const activations = [...new Map(a.plan.blocks[b]!.weights.map((l) => [l.activation, l.inDim]))].map(([n, channels]) => ({ name: n, channels }));
        const stats = planStatsGraph(activations, { x: a.plan.stateAfter[b]!, y: a.plan.stateAfter[b + 1]! });
        assert.equal(a.plan.stateAfter[b]!.length, "fused" in opts ? 2 : 1);
        const first = await load(0);
        const { cut, session } = await load(b, stats);
        for (const s of loadCalibrationSet(g.calibPath, { seed: 21 })) {
          const feeds = new SampleFeeds(s, a.partition.mainInput, a.index.inputs);
          const feed = (c: typeof cut, state: Record<string, WireTensor>) => Object.fromEntries([...c.sideInputs, ...c.stateInputs].map((n) => [n, state[n] ?? feeds.get(n)]));
          const entering = await host.run(first.session, feed(first.cut, {}), first.cut.stateOutputs);
          const inputs = feed(cut, entering);
          const pool = s.attentionMask.map((m, t) => (m && t % 3 !== 0 ? 1 : 0));
          inputs[STATS_POOL_INPUT] = { type: "float32", dims: [pool.length], data: Float32Array.from(pool) };
          const out = await host.run(session, inputs, [...cut.stateOutputs, ...cut.activations, ...stats.sums.map((x) => x.output), stats.distance!.output]);
          for (const sum of stats.sums) {
            const expected = new ChannelStats(sum.activation, sum.channels);
            expected.add(out[sum.activation] ?? inputs[sum.activation]!, pool, "sample");
            const got = out[sum.output]!;
            assert.equal(got.type, "float64");
            assert.deepEqual(got.dims, [sum.channels]);
            for (let c = 0; c < sum.channels; c++) {
              assert.ok(Math.abs((got.data[c] as number) - expected.sum[c]!) <= 1e-12 * expected.sum[c]!, `${sum.activation}[${c}]: ${got.data[c]} vs ${expected.sum[c]}`);
            }
          }
          const x = a.plan.stateAfter[b]!.map((t) => inputs[t]!);
          const y = a.plan.stateAfter[b + 1]!.map((t) => out[t] ?? inputs[t]!);
          const expected = cosineDistances(x, y, s.tokens, new Uint8Array(s.tokens).fill(1), "sample");
          const got = out[stats.distance!.output]!.data as Float64Array;
          assert.equal(got.length, s.tokens);
          for (let t = 0; t < s.tokens; t++) assert.ok(Math.abs(got[t]! - expected[t]!) <= 1e-12, `token ${t}: ${got[t]} vs ${expected[t]}`);
          assert.ok(expected.some((d) => d > 1e-3), "the block changes the hidden states");
        }
      } finally {
        await host.close();
        await data.close();
      }
    });
  }

  test("a boundary tensor the block's graph does not hold is refused, naming --stats host", async () => {
    const g = await generateModel({ outDir: join(tmp.path, "cut-missing"), layers: 2, hidden: 32, samples: 1, seqLen: 8, imageTokens: 2 });
    const a = analyzeModel(g.modelPath);
    const cut = a.plan.blocks[0]!;
    const model = buildCutModel({ source: a.loaded.model, index: a.index, cut, initializerBytes: new Map(cut.initializers.map((n) => [n, new Uint8Array(0)])), floatType: a.floatType });
    assert.throws(() => addStatsOutputs(model, planStatsGraph([], { x: ["not-a-tensor"], y: a.plan.stateAfter[1]! }), cut.label), /--stats graph needs not-a-tensor .* use --stats host/);
  });
});

describe("--stats graph against --stats host", () => {
  let medium: { model: string; calib: string };
  before(async () => {
    const g = await generateModel({ outDir: join(tmp.path, "medium"), layers: 8, hidden: 1024, samples: 16, seqLen: 128, imageTokens: 64 });
    medium = { model: g.modelPath, calib: g.calibPath };
  });

  for (const method of ["atv", "wanda"]) {
    test(`${method} on the medium generated model: at least 99.9% of the masks agree`, async () => {
      const { host, graph } = await pruneBoth(`medium-${method}`, { ...medium, method, sparsity: 0.5 });
      const agreement = maskAgreement(host.data, graph.data, host.report.totals.params, 4);
      assert.ok(agreement >= 0.999, `mask agreement ${agreement}`);
      assert.equal(graph.report.totals.pruned, host.report.totals.pruned);
      if (method === "atv") {
        // Distances differ at most by the order of float64 sums: the same pools.
        for (const [b, r] of graph.report.blocks.entries()) {
          assert.ok(Math.abs(r.cosDistAvg! - host.report.blocks[b]!.cosDistAvg!) < 1e-9, `block ${b}`);
          assert.deepEqual(r.k, host.report.blocks[b]!.k);
        }
      }
    });
  }

  test("wanda with the OWL profile (its pre-pass also in the graph) and ATV 2:4, on a small fused float16 model: the masks agree", async () => {
    const g = await generateModel({ outDir: join(tmp.path, "small"), layers: 3, hidden: 96, fused: true, fp16: true, samples: 6, seqLen: 40, imageTokens: 16, seed: 9 });
    for (const [name, spec] of [["owl", { method: "wanda", sparsity: 0.5, sparsityProfile: "owl" }], ["atv-2of4", { method: "atv", pattern: "2:4", alpha: 4 }]] as const) {
      const { host, graph } = await pruneBoth(`small-${name}`, { model: g.modelPath, calib: g.calibPath, ...spec });
      assert.ok(maskAgreement(host.data, graph.data, host.report.totals.params, 2) >= 0.999, name);
    }
  });

  test("the builder-exported fixture (fp16, fused ops, image tokens marked): ATV masks agree", async () => {
    const calib = join(tmp.path, "fixture-calib.jsonl");
    const lines = [];
    for (let i = 0; i < 4; i++) {
      const n = 12 + i;
      lines.push(JSON.stringify({ input_ids: Array.from({ length: n }, (_, t) => 3 + ((t * 7919 + i * 104729) % 31990)), image_mask: Array.from({ length: n }, (_, t) => (t >= 2 && t < 8 ? 1 : 0)) }));
    }
    writeFileSync(calib, lines.join("\n") + "\n");
    const { host, graph } = await pruneBoth("fixture", { model: FIXTURE_MODEL, calib, method: "atv", alpha: 4 });
    assert.ok(maskAgreement(host.data, graph.data, host.report.totals.params, 2) >= 0.999);
    assert.ok(graph.report.blocks.some((b) => b.k.some((k) => k > 0)), "some visual tokens were pooled");
  });
});

describe("which methods --stats graph supports", () => {
  const base = { model: "m.onnx", calib: "c.jsonl", out: "o" };
  test("the default is host; atv and wanda take graph (magnitude, which reads no statistics, ignores it)", () => {
    assert.equal(resolveSpec({ ...base, method: "atv" }, 1).stats, "host");
    for (const method of ["atv", "wanda", "magnitude"]) assert.equal(resolveSpec({ ...base, method, stats: "graph" }, 1).stats, "graph");
  });

  for (const method of ["sparsegpt", "atv-sparsegpt", "tamp"]) {
    test(`${method} refuses it when the spec is resolved (its statistics need whole activations)`, () => {
      assert.throws(() => resolveSpec({ ...base, method, stats: "graph" }, 1), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "stats" && new RegExp(`graph is not supported yet for method ${method}`).test(e.message));
      assert.equal(resolveSpec({ ...base, method, stats: "host" }, 1).stats, "host");
    });
  }

  test("an unknown setting is refused naming stats", () => {
    assert.throws(() => resolveSpec({ ...base, method: "atv", stats: "gpu" as "graph" }, 1), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "stats" && /must be host or graph/.test(e.message));
  });

  test("the plan carries it to the workers; a plan asking graph of sparsegpt is refused naming plan.stats", () => {
    const plan = {
      model: "m", calib: "c", out: "o", method: "atv", methodOptions: { alpha: 1, magnitudeScope: "matrix" as const, pattern: { kind: "unstructured" as const }, patternText: "unstructured" },
      sparsity: 0.5, propagation: "sequential" as const, nsamples: undefined, seed: 21, sparsityProfile: "uniform", profileOptions: { owlLambda: 0.08, owlM: 5 },
      phases: ["prune" as const], blocks: 1, linears: [], dataBytes: 0, activationCacheBytes: 0, maskThreads: 1, stats: "graph" as const,
    };
    assert.equal(fromPlanMessage(toPlanMessage(plan)).stats, "graph");
    assert.equal(fromPlanMessage(toPlanMessage({ ...plan, stats: "host" })).stats, "host");
    const old = toPlanMessage(plan);
    old.stats = "";
    assert.equal(fromPlanMessage(old).stats, "host", "a coordinator that sends no stats means host");
    assert.throws(() => checkPlan({ ...plan, method: "sparsegpt" }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "plan.stats");
  });
});

test("ChannelStats.addSums adds a sample's vector, checking its length and NaN/Inf", () => {
  const s = new ChannelStats("act", 3);
  s.addSums(Float64Array.from([1, 2, 3]), "sample 0");
  s.addSums(Float32Array.from([0.5, 0, 1]), "sample 1");
  assert.deepEqual([...s.sum], [1.5, 2, 4]);
  assert.throws(() => s.addSums(Float64Array.from([1, 2]), "sample 2"), (e: unknown) => e instanceof NumericError && /got 2 channel sums, expected 3/.test(e.message));
  assert.throws(() => s.addSums(Float64Array.from([1, Number.NaN, 0]), "sample 3"), (e: unknown) => e instanceof NumericError && /NaN or Inf .*channel 1/.test(e.message));
});
