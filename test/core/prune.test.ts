// End-to-end pruning: the pruner against an independent reference (full-model activations, slow
// sort), ATV/Wanda identities, determinism across threads and graph analyses, real exports.
import { before, after, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { ortTensor } from "../../services/core/src/runtime/ortTensor.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { analyzeModel } from "../../services/core/src/pipeline/modelAnalysis.js";
import { loadCalibrationSet } from "../../services/core/src/calib/calibSet.js";
import { readModel } from "../../services/core/src/onnx/modelFile.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { toFloat32 } from "../../services/core/src/onnx/dtype.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { FIXTURE_DIR, FIXTURE_MODEL, tempDir } from "../support/fixtures.js";
import { referenceDistances, referenceMask, referenceScale, runExposed } from "../support/reference.js";

const tmp = tempDir("prune");
after(() => tmp.cleanup());

let unfused: { model: string; calib: string };
let noNames: { model: string; calib: string };
let fusedFp16: { model: string; calib: string };

before(async () => {
  const gen = async (name: string, extra: object) => {
    const r = await generateModel({ outDir: join(tmp.path, name), layers: 2, hidden: 64, samples: 6, seqLen: 40, imageTokens: 20, seed: 7, ...extra });
    return { model: r.modelPath, calib: r.calibPath };
  };
  unfused = await gen("unfused", {});
  noNames = await gen("nonames", { nodeNames: "none" });
  fusedFp16 = await gen("fused16", { fused: true, fp16: true });
});

async function prune(name: string, spec: Partial<PruneSpec> & Pick<PruneSpec, "model">) {
  const out = join(tmp.path, "out", name);
  const report = await pruneModel({ method: "atv", sparsity: 0.5, threads: 2, out, ...spec } as PruneSpec);
  return { out, report, data: readFileSync(join(out, "model.onnx.data")) };
}

async function weights(model: string): Promise<Map<string, Float32Array>> {
  const loaded = readModel(model);
  const data = new TensorData(loaded);
  const out = new Map<string, Float32Array>();
  for (const t of loaded.model.graph!.initializer) {
    if (t.dims.length === 2) out.set(t.name, toFloat32(await data.read(t), t.dataType, t.name));
  }
  await data.close();
  return out;
}

/** Checks one pruned linear against the reference mask, tolerating only near-ties at the threshold. */
function assertMatchesReference(before: Float32Array, after: Float32Array, inDim: number, outDim: number, scale: Float64Array, sparsity: number, label: string) {
  const expected = referenceMask(before, inDim, outDim, scale, sparsity);
  const k = Math.floor(inDim * sparsity);
  let mismatches = 0;
  for (let o = 0; o < outDim; o++) {
    const metric = (c: number) => Math.abs(before[c * outDim + o]!) * Math.sqrt(scale[c]!);
    const sorted = Array.from({ length: inDim }, (_, c) => metric(c)).sort((a, b) => a - b);
    const thr = sorted[k - 1]!;
    let prunedInColumn = 0;
    for (let c = 0; c < inDim; c++) {
      const i = c * outDim + o;
      const pruned = after[i] === 0 && before[i] !== 0 ? 1 : 0;
      prunedInColumn += pruned;
      if (pruned !== expected[i]) {
        mismatches++;
        assert.ok(Math.abs(metric(c) - thr) <= 1e-4 * thr, `${label}: column ${o} input ${c} disagrees with the reference away from the threshold`);
      } else if (!pruned) {
        assert.equal(after[i], before[i], `${label}: a kept weight changed`);
      }
    }
    assert.equal(prunedInColumn, k, `${label}: column ${o} must lose exactly floor(in*s) = ${k}`);
  }
  assert.ok(mismatches <= inDim * outDim * 0.002, `${label}: ${mismatches} near-tie disagreements`);
}

test("Wanda matches the independent reference in every block (sequential propagation)", async () => {
  const { out, report } = await prune("wanda-ref", { model: unfused.model, calib: unfused.calib, method: "wanda" });
  const a = analyzeModel(unfused.model);
  const samples = loadCalibrationSet(unfused.calib, { seed: 21 });
  const dense = await weights(unfused.model);
  const pruned = await weights(join(out, "model.onnx"));
  // Block b is calibrated on the model whose blocks < b are pruned and whose block b is dense:
  // the pruned model gives block b's inputs exactly when b's activations do not depend on b's
  // own pruned weights, which holds for the first linears (q/k/v read the input norm).
  for (const [b, linears] of a.partition.blockLinears.entries()) {
    const q = linears[0]!;
    const source = b === 0 ? unfused.model : join(out, "model.onnx");
    const acts = (await runExposed(source, [q.activation], samples, a.partition.mainInput)).map((m) => m.get(q.activation)!);
    const scale = referenceScale(acts, samples.map((s) => s.attentionMask), q.inDim);
    assertMatchesReference(dense.get(q.weight)!, pruned.get(q.weight)!, q.inDim, q.outDim, scale, 0.5, `block ${b} ${q.weight}`);
  }
  assert.equal(report.totals.sparsity, 0.5);
});

test("ATV matches the independent reference: cosine distances, k per sample and the pooled statistics", async () => {
  const alpha = 8;
  const { out, report } = await prune("atv-ref", { model: unfused.model, calib: unfused.calib, alpha });
  const a = analyzeModel(unfused.model);
  const samples = loadCalibrationSet(unfused.calib, { seed: 21 });
  const q = a.partition.blockLinears[0]![0]!;
  const xs = a.plan.stateAfter[0]!;
  const ys = a.plan.stateAfter[1]!;
  const runs = await runExposed(unfused.model, [q.activation, ...xs, ...ys].filter((n) => n !== a.partition.mainInput), samples, a.partition.mainInput);
  const hidden = 64;
  let total = 0, count = 0;
  const dist = samples.map((s, j) => {
    const x = xs.map((n) => (n === a.partition.mainInput ? Float32Array.from(s.embeds!.data as Float32Array) : runs[j]!.get(n)!));
    const d = referenceDistances(x, ys.map((n) => runs[j]!.get(n)!), s.tokens, hidden);
    for (let t = 0; t < s.tokens; t++) if (s.imageMask[t] && s.attentionMask[t]) { total += d[t]!; count++; }
    return d;
  });
  const avg = total / count;
  assert.ok(Math.abs(report.blocks[0]!.cosDistAvg! - avg) < 1e-12, "cosDistAvg");
  const pools = samples.map((s, j) => {
    const text = [...s.imageMask].filter((m, t) => !m && s.attentionMask[t]).length;
    const visual = [...Array(s.tokens).keys()].filter((t) => s.imageMask[t] && s.attentionMask[t]);
    const x = Math.min(1, alpha * avg) * text;
    const k = Math.min(visual.length, Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x));
    assert.equal(report.blocks[0]!.k[j], k, `k of sample ${j}`);
    visual.sort((p, r) => dist[j]![r]! - dist[j]![p]! || p - r);
    const pool = Uint8Array.from(s.attentionMask, (m, t) => (m && !s.imageMask[t] ? 1 : 0));
    for (const t of visual.slice(0, k)) pool[t] = 1;
    return pool;
  });
  assert.ok(report.blocks[0]!.k.some((k, j) => k > 0 && k < report.blocks[0]!.nVisual[j]!), "the test needs a block where ATV keeps some but not all visual tokens");
  const scale = referenceScale(runs.map((r) => r.get(q.activation)!), pools, q.inDim);
  const dense = await weights(unfused.model);
  const pruned = await weights(join(out, "model.onnx"));
  assertMatchesReference(dense.get(q.weight)!, pruned.get(q.weight)!, q.inDim, q.outDim, scale, 0.5, q.weight);
});

test("ATV with alpha 0 uses exactly the text-only pool", async () => {
  const { out, report } = await prune("atv-a0", { model: unfused.model, calib: unfused.calib, alpha: 0 });
  assert.ok(report.blocks.every((b) => b.k.every((k) => k === 0)));
  const a = analyzeModel(unfused.model);
  const samples = loadCalibrationSet(unfused.calib, { seed: 21 });
  const q = a.partition.blockLinears[0]![0]!;
  const acts = (await runExposed(unfused.model, [q.activation], samples, a.partition.mainInput)).map((m) => m.get(q.activation)!);
  const textPools = samples.map((s) => Uint8Array.from(s.attentionMask, (m, t) => (m && !s.imageMask[t] ? 1 : 0)));
  const scale = referenceScale(acts, textPools, q.inDim);
  assertMatchesReference((await weights(unfused.model)).get(q.weight)!, (await weights(join(out, "model.onnx"))).get(q.weight)!, q.inDim, q.outDim, scale, 0.5, q.weight);
});

test("ATV on a text-only calibration set equals Wanda bit for bit (generated model)", async () => {
  const textOnly = join(tmp.path, "unfused", "text-only.jsonl");
  const lines = readFileSync(unfused.calib, "utf8").trim().split("\n").map((l) => {
    const { image_mask: _drop, ...rest } = JSON.parse(l) as Record<string, unknown>;
    return JSON.stringify(rest);
  });
  writeFileSync(textOnly, lines.join("\n") + "\n");
  const atv = await prune("text-atv", { model: unfused.model, calib: textOnly, alpha: 5 });
  const wanda = await prune("text-wanda", { model: unfused.model, calib: textOnly, method: "wanda" });
  assert.ok(atv.data.equals(wanda.data), "pruned weights differ");
  assert.ok(atv.report.blocks.every((b) => b.cosDistAvg === 0 && b.k.every((k) => k === 0)));
});

test("the fixture (real builder export: fp16, external data, fused ops, input_ids): ATV equals Wanda, runs, untouched tensors keep their bytes", async () => {
  const calib = join(tmp.path, "fixture-calib.jsonl");
  const lines = [];
  for (let i = 0; i < 4; i++) lines.push(JSON.stringify({ input_ids: Array.from({ length: 10 + i }, (_, t) => 3 + ((t * 7919 + i * 104729) % 31990)) }));
  writeFileSync(calib, lines.join("\n") + "\n");
  const atv = await prune("fixture-atv", { model: FIXTURE_MODEL, calib });
  const wanda = await prune("fixture-wanda", { model: FIXTURE_MODEL, calib, method: "wanda" });
  assert.ok(atv.data.equals(wanda.data));
  assert.equal(atv.report.totals.graphAnalysis, "names");
  assert.equal(atv.report.layers.length, 14);
  for (const l of atv.report.layers) assert.equal(l.sparsity, 0.5, l.weight);

  const original = await ort.InferenceSession.create(FIXTURE_MODEL);
  const pruned = await ort.InferenceSession.create(join(atv.out, "model.onnx"));
  assert.deepEqual(pruned.inputNames, original.inputNames);
  assert.deepEqual(pruned.outputNames, original.outputNames);
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from([5n, 6n, 7n, 8n]), [1, 4]),
    attention_mask: new ort.Tensor("int64", BigInt64Array.from([1n, 1n, 1n, 1n]), [1, 4]),
    position_ids: new ort.Tensor("int64", BigInt64Array.from([0n, 1n, 2n, 3n]), [1, 4]),
  };
  for (const n of original.inputNames.filter((n) => n.startsWith("past"))) feeds[n] = ortTensor("float16", new Uint16Array(0), [1, 1, 0, 16]);
  const a = await original.run(feeds);
  const b = await pruned.run(feeds);
  assert.deepEqual(b["logits"]!.dims, a["logits"]!.dims);
  assert.notDeepEqual(b["logits"]!.data, a["logits"]!.data);

  const before = await weights(FIXTURE_MODEL);
  const after = await weights(join(atv.out, "model.onnx"));
  for (const name of ["model.embed_tokens.weight", "lm_head.MatMul.weight"]) assert.deepEqual(after.get(name), before.get(name));
  assert.ok(readFileSync(join(FIXTURE_DIR, "model.onnx.data")).length > 0);
});

test("a --fused --fp16 generated model prunes end to end and the result runs", async () => {
  const { out, report } = await prune("fused16", { model: fusedFp16.model, calib: fusedFp16.calib, alpha: 8 });
  assert.equal(report.spec["floatType"], "FLOAT16");
  assert.ok(report.blocks.some((b) => b.k.some((k) => k > 0)));
  const session = await ort.InferenceSession.create(join(out, "model.onnx"));
  const samples = loadCalibrationSet(fusedFp16.calib, { seed: 21 });
  const a = analyzeModel(fusedFp16.model);
  assert.ok(session.outputNames.includes("logits"));
  await session.release();
  const [run] = await runExposed(join(out, "model.onnx"), ["logits"], samples.slice(0, 1), a.partition.mainInput);
  const logits = run!.get("logits")!;
  assert.equal(logits.length, samples[0]!.tokens * 256);
  assert.ok(logits.every(Number.isFinite));
});

test("masks do not depend on the thread count, and names vs structure grouping agree", async () => {
  const one = await prune("threads1", { model: unfused.model, calib: unfused.calib, threads: 1, alpha: 8 });
  const two = await prune("threads2", { model: unfused.model, calib: unfused.calib, threads: 2, alpha: 8 });
  assert.ok(one.data.equals(two.data));
  const structural = await prune("structure", { model: noNames.model, calib: noNames.calib, threads: 2, alpha: 8 });
  assert.equal(structural.report.totals.graphAnalysis, "structure");
  assert.ok(structural.data.equals(two.data));
});

test("dense propagation: block 0 as sequential, later blocks calibrated on the dense model", async () => {
  const seq = await prune("prop-seq", { model: unfused.model, calib: unfused.calib, method: "wanda" });
  const dense = await prune("prop-dense", { model: unfused.model, calib: unfused.calib, method: "wanda", propagation: "dense" });
  const a = analyzeModel(unfused.model);
  const w0 = a.partition.blockLinears[0]!.map((l) => l.weight);
  const ws = await weights(join(seq.out, "model.onnx"));
  const wd = await weights(join(dense.out, "model.onnx"));
  for (const n of w0) assert.deepEqual(wd.get(n), ws.get(n));
  const samples = loadCalibrationSet(unfused.calib, { seed: 21 });
  const q = a.partition.blockLinears[1]![0]!;
  const acts = (await runExposed(unfused.model, [q.activation], samples, a.partition.mainInput)).map((m) => m.get(q.activation)!);
  const scale = referenceScale(acts, samples.map((s) => s.attentionMask), q.inDim);
  assertMatchesReference((await weights(unfused.model)).get(q.weight)!, wd.get(q.weight)!, q.inDim, q.outDim, scale, 0.5, `dense ${q.weight}`);
});

test("N:M and magnitude patterns through the whole pipeline", async () => {
  const nm = await prune("nm24", { model: unfused.model, calib: unfused.calib, method: "wanda", pattern: "2:4", sparsity: undefined });
  assert.ok(nm.report.layers.every((l) => l.sparsity === 0.5));
  const after = await weights(join(nm.out, "model.onnx"));
  for (const l of nm.report.layers) {
    const w = after.get(l.weight)!;
    const [inDim, outDim] = l.shape;
    for (let o = 0; o < outDim; o++) for (let g = 0; g < inDim; g += 4) {
      let zeros = 0;
      for (let c = g; c < g + 4; c++) if (w[c * outDim + o] === 0) zeros++;
      assert.ok(zeros >= 2, `${l.weight} column ${o} group ${g}`);
    }
  }
  const mag = await prune("magnitude", { model: unfused.model, method: "magnitude", sparsity: 0.3 });
  assert.equal(mag.report.totals.samples, 0);
  for (const l of mag.report.layers) assert.equal(l.pruned, Math.floor(l.params * 0.3), l.weight);
});

test("--include / --exclude choose which linears are pruned", async () => {
  const r = await prune("include", { model: unfused.model, calib: unfused.calib, method: "wanda", include: ["mlp"], exclude: ["down_proj"] });
  assert.ok(r.report.layers.length > 0);
  assert.ok(r.report.layers.every((l) => /mlp/.test(l.node) && !/down_proj/.test(l.node)), JSON.stringify(r.report.layers.map((l) => l.node)));
  const before = await weights(unfused.model);
  const after = await weights(join(r.out, "model.onnx"));
  const untouched = [...before.keys()].filter((n) => !r.report.layers.some((l) => l.weight === n));
  for (const n of untouched) assert.deepEqual(after.get(n), before.get(n), n);
  copyFileSync(unfused.calib, join(tmp.path, "unused.jsonl"));
});

test("every fused variant prunes end to end; names and structure agree on fused graphs too", async () => {
  const variants: Array<[string, object]> = [["gqa", { attention: "gqa", kvHeads: 2 }], ["layernorm", { norm: "layer" }]];
  for (const [name, extra] of variants) {
    const g = await generateModel({ outDir: join(tmp.path, `v-${name}`), layers: 2, hidden: 64, samples: 4, fused: true, seed: 9, ...extra });
    const { out, report } = await prune(`v-${name}`, { model: g.modelPath, calib: g.calibPath, alpha: 8 });
    assert.equal(report.totals.sparsity, 0.5, name);
    const session = await ort.InferenceSession.create(join(out, "model.onnx"));
    assert.ok(session.outputNames.includes("logits"), name);
    await session.release();
  }
  const named = await generateModel({ outDir: join(tmp.path, "f-named"), layers: 3, hidden: 64, samples: 4, fused: true, seed: 4 });
  const bare = await generateModel({ outDir: join(tmp.path, "f-bare"), layers: 3, hidden: 64, samples: 4, fused: true, seed: 4, nodeNames: "none" });
  const a = await prune("f-named", { model: named.modelPath, calib: named.calibPath, alpha: 8 });
  const b = await prune("f-bare", { model: bare.modelPath, calib: bare.calibPath, alpha: 8 });
  assert.equal(b.report.totals.graphAnalysis, "structure");
  assert.ok(a.data.equals(b.data));
});

test("float32 .npy embeddings are cast to a float16 model's input: same masks as float16 files", async () => {
  const { readNpy, writeNpy } = await import("../../services/core/src/calib/npy.js");
  const { halfToFloatTable } = await import("../../services/core/src/onnx/dtype.js");
  const dir = join(tmp.path, "fused16");
  const lines = readFileSync(fusedFp16.calib, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
  const table = halfToFloatTable();
  const f32 = lines.map((l, i) => {
    const arr = readNpy(join(dir, l["inputs_embeds"] as string));
    assert.equal(arr.dtype, "float16");
    writeNpy(join(dir, `f32-${i}.npy`), { dtype: "float32", shape: arr.shape, data: Float32Array.from(arr.data as Uint16Array, (h) => table[h]!) });
    return JSON.stringify({ ...l, inputs_embeds: `f32-${i}.npy` });
  });
  writeFileSync(join(dir, "calib-f32.jsonl"), f32.join("\n") + "\n");
  const half = await prune("npy16", { model: fusedFp16.model, calib: fusedFp16.calib, alpha: 8 });
  const full = await prune("npy32", { model: fusedFp16.model, calib: join(dir, "calib-f32.jsonl"), alpha: 8 });
  assert.ok(half.data.equals(full.data));
});
