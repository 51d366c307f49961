/**
 * `--method tamp` end to end in one process (METHODS.md §3) on a generated unfused decoder,
 * against an independent reference computed here from the FULL model's activations (linear
 * outputs and Softmax probabilities exposed by onnxruntime, no block cutting): DAS scores and
 * the allocation give each linear's target, AMIA's subsets give Wanda's s[c], and each output
 * column loses int(in·s_i) weights.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { analyzeModel } from "../../services/core/src/pipeline/modelAnalysis.js";
import { resolveSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import type { PruneReport } from "../../services/core/src/pipeline/report.js";
import { loadCalibrationSet, type CalibSample } from "../../services/core/src/calib/calibSet.js";
import { tampAllocate } from "../../services/core/src/prune/tampAllocation.js";
import { CalibrationError, GraphError, InvalidArgumentError } from "../../services/core/src/errors.js";
import { modelWeights, referenceMask, runExposed } from "../support/reference.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("tamp-prune");
after(() => tmp.cleanup());
let unfused: { model: string; calib: string };
let fused: { model: string; calib: string };

before(async () => {
  const gen = async (name: string, extra: object) => {
    const r = await generateModel({ outDir: join(tmp.path, name), layers: 2, hidden: 32, samples: 4, seqLen: 24, imageTokens: 8, seed: 5, ...extra });
    return { model: r.modelPath, calib: r.calibPath };
  };
  unfused = await gen("unfused", {});
  fused = await gen("fused", { fused: true });
});

// ---- the reference, written from METHODS.md §3 without the production modules ----------------

interface Sel { rows: number[][]; visual: boolean[]; positions: number[] }

function attendedUnitRows(values: Float32Array, dim: number, s: CalibSample): Sel {
  const positions = [...s.attentionMask.keys()].filter((p) => s.attentionMask[p]);
  const rows = positions.map((p) => {
    const r = Array.from(values.subarray(p * dim, (p + 1) * dim), Number);
    const n = Math.max(Math.hypot(...r), 1e-12);
    return r.map((v) => v / n);
  });
  return { rows, visual: positions.map((p) => s.imageMask[p] === 1), positions };
}

const dot = (a: number[], b: number[]): number => a.reduce((acc, v, i) => acc + v * b[i]!, 0);

function density({ rows, visual }: Sel): [number, number, number] {
  const v = rows.filter((_, i) => visual[i]);
  const l = rows.filter((_, i) => !visual[i]);
  const pos = (g: number[][]): number => {
    const xs: number[] = [];
    for (let i = 0; i < g.length; i++) for (let k = i + 1; k < g.length; k++) { const d = dot(g[i]!, g[k]!); if (d > 0) xs.push(d); }
    return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
  };
  const cross: number[] = [];
  for (const a of v) for (const b of l) cross.push(dot(a, b));
  return [pos(v), pos(l), cross.length ? cross.reduce((a, b) => a + b, 0) / cross.length : NaN];
}

function amia(sel: Sel, a: number[]): boolean[] {
  const O = sel.rows;
  const T = O.length;
  const dist = O.map((x) => O.map((y) => 1 - dot(x, y)));
  const K = O.map((x) => O.map((y) => Math.exp(-x.reduce((acc, v, i) => acc + (v - y[i]!) ** 2, 0) / 2)));
  const knn = dist.map((row) => row.map((d, u) => ({ d, u })).sort((p, q) => p.d - q.d || p.u - q.u).slice(1, 4).map((e) => e.u));
  const g = a.map((at, t) => at + knn[t]!.reduce((acc, u) => acc + Math.exp(-dist[t]![u]!) * a[u]!, 0));
  const [v, l, vl] = density(sel);
  const thr = 0.1 * Math.sqrt(1 - (v + l + vl) / 3);
  const meanK = K.flat().reduce((x, y) => x + y, 0) / (T * T);
  const S: number[] = [];
  while (S.length < T) {
    const t = g.indexOf(Math.max(...g));
    const push = Math.max(g[t]!, 0);
    for (const u of knn[t]!) g[u]! -= Math.exp(-0.2 * dist[t]![u]!) * push;
    S.push(t);
    const low = Math.min(...g) - 1;
    for (const s of S) g[s] = low;
    const ss = S.reduce((acc, x) => acc + S.reduce((b, y) => b + K[x]![y]!, 0), 0) / (S.length * S.length);
    const ts = K.reduce((acc, row) => acc + S.reduce((b, y) => b + row[y]!, 0), 0) / (T * S.length);
    if (meanK + ss - 2 * ts < thr) break;
  }
  return O.map((_, t) => S.includes(t));
}

// ---------------------------------------------------------------------------------------------

test("tamp: DAS targets and AMIA masks equal the reference from the full model (dense propagation)", async () => {
  const out = join(tmp.path, "o-dense");
  const report: PruneReport = await pruneModel({ ...unfused, out, method: "tamp", sparsity: 0.5, propagation: "dense", threads: 1 });
  const a = analyzeModel(unfused.model);
  const samples = loadCalibrationSet(unfused.calib, { seed: 21 });
  const linears = a.partition.blockLinears.flat();
  const outputOf = (n: number) => a.index.nodes[n]!.output[0]!;
  const softmaxOf = a.partition.blockLinears.map((_, b) => {
    const n = a.index.topoOrder.find((i) => a.partition.nodeBlock[i] === b && a.index.nodes[i]!.opType === "Softmax")!;
    return outputOf(n);
  });
  const names = [...new Set([...linears.flatMap((l) => [l.activation, outputOf(l.nodeIndex)]), ...softmaxOf])].filter((n) => n !== a.partition.mainInput);
  const runs = await runExposed(unfused.model, names, samples, a.partition.mainInput);

  // DAS: components averaged over the samples with all three defined; score; allocation.
  const scores = linears.map((l) => {
    const comps = runs.map((r, j) => density(attendedUnitRows(r.get(outputOf(l.nodeIndex))!, l.outDim, samples[j]!))).filter((c) => c.every((x) => !Number.isNaN(x)));
    assert.ok(comps.length > 0);
    const mean = (i: number) => comps.reduce((s, c) => s + c[i]!, 0) / comps.length;
    return 3 - mean(0) - mean(1) - mean(2);
  });
  const expected = tampAllocate(linears.map((l) => l.inDim * l.outDim), scores, 0.5, 0.6).sparsity;
  assert.deepEqual(report.sparsityProfile, { name: "das", tampMaxSparsity: 0.6 });
  const byWeight = new Map(report.layers.map((r) => [r.weight, r]));
  linears.forEach((l, i) => {
    const r = byWeight.get(l.weight)!;
    assert.equal(r.targetSparsity, expected[i], `${l.weight}: target`);
    assert.equal(r.pruned, Math.floor(l.inDim * expected[i]!) * l.outDim, `${l.weight}: int(in·s_i) per column`);
  });
  assert.ok(new Set(expected).size > 1, "DAS spreads the targets");

  // AMIA: per linear and sample, the subset; s[c] over it; Wanda's mask per column.
  const dense = await modelWeights(unfused.model);
  const pruned = await modelWeights(join(out, "model.onnx"));
  let subsetSizes = 0;
  let tokens = 0;
  for (const [b, block] of a.partition.blockLinears.entries()) {
    for (const l of block) {
      const s = new Float64Array(l.inDim);
      runs.forEach((r, j) => {
        const sample = samples[j]!;
        const sel = attendedUnitRows(r.get(outputOf(l.nodeIndex))!, l.outDim, sample);
        const probs = r.get(softmaxOf[b]!)!;
        const T = sample.tokens;
        const heads = probs.length / (T * T);
        const q = sel.positions.at(-1)!;
        const att = sel.positions.map((p) => { let acc = 0; for (let h = 0; h < heads; h++) acc += probs[(h * T + q) * T + p]!; return acc / heads; });
        const chosen = amia(sel, att);
        const act = r.get(l.activation)!;
        sel.positions.forEach((p, k) => {
          if (!chosen[k]) return;
          for (let c = 0; c < l.inDim; c++) s[c]! += act[p * l.inDim + c]! ** 2;
        });
        subsetSizes += chosen.filter(Boolean).length;
        tokens += chosen.length;
      });
      const want = referenceMask(dense.get(l.weight)!, l.inDim, l.outDim, s.map((v) => v / samples.length), expected[linears.indexOf(l)]!);
      const before = dense.get(l.weight)!;
      const after = pruned.get(l.weight)!;
      const got = Uint8Array.from(before, (v, i) => (after[i] === 0 && v !== 0 ? 1 : 0));
      assert.deepEqual(got, want, `${l.weight}: mask`);
    }
  }
  assert.ok(subsetSizes < tokens, `AMIA keeps a subset (${subsetSizes} of ${tokens} token rows)`);
});

test("tamp with sequential propagation: same DAS targets (the pre-pass is dense), block 0 masks equal", async () => {
  const seq = await pruneModel({ ...unfused, out: join(tmp.path, "o-seq"), method: "tamp", sparsity: 0.5, threads: 1 });
  const dense = await pruneModel({ ...unfused, out: join(tmp.path, "o-dense2"), method: "tamp", sparsity: 0.5, propagation: "dense", threads: 1 });
  assert.deepEqual(seq.layers.map((l) => l.targetSparsity), dense.layers.map((l) => l.targetSparsity));
  const w0 = analyzeModel(unfused.model).partition.blockLinears[0]!.map((l) => l.weight);
  const [ws, wd] = [await modelWeights(join(tmp.path, "o-seq", "model.onnx")), await modelWeights(join(tmp.path, "o-dense2", "model.onnx"))];
  for (const w of w0) assert.deepEqual(ws.get(w), wd.get(w), w);
});

test("--tamp-max-sparsity bounds every target; its range, and profiles TAMP does not take, are refused", async () => {
  const r = await pruneModel({ ...unfused, out: join(tmp.path, "o-max"), method: "tamp", sparsity: 0.5, tampMaxSparsity: 0.55, threads: 1 });
  for (const l of r.layers) assert.ok(l.targetSparsity <= 0.55 + 1e-6, `${l.weight}: ${l.targetSparsity}`);
  assert.deepEqual(r.sparsityProfile, { name: "das", tampMaxSparsity: 0.55 });
  const base = { ...unfused, out: join(tmp.path, "unused") };
  const field = (f: string) => (e: unknown) => e instanceof InvalidArgumentError && e.subject === f;
  assert.throws(() => resolveSpec({ ...base, method: "tamp", tampMaxSparsity: 0.4 }, 1), field("tampMaxSparsity"));
  assert.throws(() => resolveSpec({ ...base, method: "wanda", tampMaxSparsity: 0.6 }, 1), field("tampMaxSparsity"));
  assert.throws(() => resolveSpec({ ...base, method: "tamp", sparsityProfile: "owl" }, 1), field("sparsityProfile"));
  assert.throws(() => resolveSpec({ ...base, method: "wanda", sparsityProfile: "das" }, 1), field("sparsityProfile"));
  assert.equal(resolveSpec({ ...base, method: "tamp" }, 1).tampMaxSparsity, 0.6);
  assert.equal(resolveSpec({ ...base, method: "tamp", pattern: "2:4" }, 1).sparsityProfile, "uniform");
});

test("tamp with 2:4: DAS ignored, every linear at 2:4 from the AMIA metric", async () => {
  const r = await pruneModel({ ...unfused, out: join(tmp.path, "o-24"), method: "tamp", pattern: "2:4", threads: 1 });
  for (const l of r.layers) {
    assert.equal(l.targetSparsity, 0.5);
    assert.equal(l.sparsity, 0.5, l.weight);
  }
});

test("tamp on fused attention is refused naming the op", async () => {
  await assert.rejects(pruneModel({ ...fused, out: join(tmp.path, "o-fused"), method: "tamp", threads: 1 }),
    (e: unknown) => e instanceof GraphError && /MultiHeadAttention/.test(e.message) && /not supported yet/.test(e.message));
});

test("tamp on a calibration set with no image token fails clearly (DAS has no sample with both modalities)", async () => {
  const textOnly = await generateModel({ outDir: join(tmp.path, "text-only"), layers: 1, hidden: 32, samples: 2, seqLen: 16, imageTokens: 0, seed: 5 });
  await assert.rejects(pruneModel({ model: textOnly.modelPath, calib: textOnly.calibPath, out: join(tmp.path, "o-text"), method: "tamp", threads: 1 }),
    (e: unknown) => e instanceof CalibrationError && /both visual and text tokens/.test(e.message));
});

test("tamp on a float16 unfused decoder with grouped KV heads (softmax in float32 behind a Cast)", async () => {
  const g = await generateModel({ outDir: join(tmp.path, "fp16-gqa"), layers: 2, hidden: 32, heads: 4, kvHeads: 2, samples: 3, seqLen: 16, imageTokens: 6, seed: 9, fp16: true });
  const r = await pruneModel({ model: g.modelPath, calib: g.calibPath, out: join(tmp.path, "o-fp16"), method: "tamp", sparsity: 0.5, threads: 1 });
  assert.ok(new Set(r.layers.map((l) => l.targetSparsity)).size > 1);
  for (const l of r.layers) {
    assert.ok(l.targetSparsity <= 0.6 + 1e-6, l.weight);
    assert.equal(l.pruned, Math.floor(l.shape[0]! * l.targetSparsity) * l.shape[1]!, l.weight);
  }
});
