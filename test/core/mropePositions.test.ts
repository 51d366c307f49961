// Multimodal RoPE position ids and merged-decoder switches: a generated Qwen2-VL-style decoder
// (position_ids [3, batch, seq], mrope sections, use_cache_branch, num_logits_to_keep) is pruned
// with the calibration set's own [3, T] positions, checked against a full-model run fed by hand.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { ModelProtoSchema, ValueInfoProtoSchema } from "../../services/gen/onnx_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { analyzeModel } from "../../services/core/src/pipeline/modelAnalysis.js";
import { loadCalibrationSet } from "../../services/core/src/calib/calibSet.js";
import { readNpy, readNpyInt64, writeNpyInt64 } from "../../services/core/src/calib/npy.js";
import { SampleFeeds } from "../../services/core/src/pipeline/sampleFeeds.js";
import { valueInfo } from "../../services/core/src/onnx/valueInfo.js";
import { OnnxDataType } from "../../services/core/src/onnx/dtype.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { tempDir } from "../support/fixtures.js";
import { modelWeights, referenceMask, referenceScale, toFloats } from "../support/reference.js";

const tmp = tempDir("mrope");
after(() => tmp.cleanup());

const GRID = 4; // image tokens form a GRID x GRID patch grid (after merging)
let gen: Awaited<ReturnType<typeof generateModel>>;
/** calib.jsonl with [3, T] positions per sample */
let calibPos: string;
/** hand-made [3, T] positions per sample */
const positions: BigInt64Array[] = [];

before(async () => {
  gen = await generateModel({
    outDir: join(tmp.path, "model"), layers: 2, hidden: 64, samples: 4, seqLen: 30, imageTokens: GRID * GRID, seed: 5,
    mropeSection: [2, 3, 3], mergedInputs: true,
  });
  const lines = readFileSync(gen.calibPath, "utf8").trim().split("\n");
  const out: string[] = [];
  lines.forEach((l, s) => {
    const info = gen.samples[s]!;
    const T = 30;
    // Qwen's rule by hand: text counts up on all three axes; the image grid starts at the next
    // position with (t, h, w) = start + (0, row, col); text after it resumes at max + 1.
    const p = new BigInt64Array(3 * T);
    let next = 0;
    for (let t = 0; t < T; t++) {
      const k = t - info.imageStart;
      if (k >= 0 && k < GRID * GRID) {
        const base = info.imageStart;
        p[t] = BigInt(base); p[T + t] = BigInt(base + Math.floor(k / GRID)); p[2 * T + t] = BigInt(base + (k % GRID));
        next = base + GRID;
      } else {
        p[t] = p[T + t] = p[2 * T + t] = BigInt(next++);
      }
    }
    positions.push(p);
    writeNpyInt64(join(tmp.path, "model", `calib/s${s}.pos.npy`), { shape: [3, T], data: p });
    out.push(JSON.stringify({ ...JSON.parse(l), position_ids: `calib/s${s}.pos.npy` }));
  });
  calibPos = join(tmp.path, "model", "calib-pos.jsonl");
  writeFileSync(calibPos, out.join("\n") + "\n");
});

test("the generated Qwen2-VL-style decoder declares [3, batch, seq] positions and refuses 1-D ones", async () => {
  const session = await ort.InferenceSession.create(gen.modelPath);
  try {
    assert.deepEqual([...session.inputNames].sort(), ["attention_mask", "inputs_embeds", "num_logits_to_keep", "position_ids", "use_cache_branch"]);
    const T = 5;
    const feeds = {
      inputs_embeds: new ort.Tensor("float32", new Float32Array(T * 64).fill(0.1), [1, T, 64]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(T).fill(1n), [1, T]),
      use_cache_branch: new ort.Tensor("bool", Uint8Array.of(0), [1]),
      num_logits_to_keep: new ort.Tensor("int64", BigInt64Array.of(2n), []),
    };
    await assert.rejects(session.run({ ...feeds, position_ids: new ort.Tensor("int64", BigInt64Array.from([0n, 1n, 2n, 3n, 4n]), [1, T]) }), /position_ids|rank/i);
    const ok = await session.run({ ...feeds, position_ids: new ort.Tensor("int64", new BigInt64Array(3 * T), [3, 1, T]) });
    assert.deepEqual(ok["logits"]!.dims, [1, 2, 256], "num_logits_to_keep 2 keeps the last two positions");
  } finally {
    await session.release();
  }
});

test("position_ids .npy: [3, T] read as given; wrong shapes and types name the line", () => {
  const samples = loadCalibrationSet(calibPos, { seed: 1 });
  assert.equal(samples[0]!.positionIds!.rows, 3);
  assert.deepEqual(samples[0]!.positionIds!.data, positions[0]);
  const bad = join(tmp.path, "bad.jsonl");
  writeNpyInt64(join(tmp.path, "short.pos.npy"), { shape: [3, 29], data: new BigInt64Array(3 * 29) });
  const first = JSON.parse(readFileSync(calibPos, "utf8").split("\n")[0]!) as Record<string, unknown>;
  first["inputs_embeds"] = join(tmp.path, "model", String(first["inputs_embeds"]));
  writeFileSync(bad, JSON.stringify({ ...first, position_ids: "short.pos.npy" }) + "\n");
  assert.throws(() => loadCalibrationSet(bad, { seed: 1 }), (e: Error) => /bad\.jsonl:1/.test(e.message) && /\[3, 30\] \(multimodal RoPE\) or \[30\]/.test(e.message));
  writeFileSync(bad, "\n" + JSON.stringify({ ...first, position_ids: first["inputs_embeds"] }) + "\n");
  assert.throws(() => loadCalibrationSet(bad, { seed: 1 }), (e: Error) => /bad\.jsonl:2/.test(e.message) && /int64/.test(e.message));
});

test("feeds follow the decoder's declared layout: [3, 1, T], [1, T, 3], [1, T]; text-only repeats 1-D positions", () => {
  const [s] = loadCalibrationSet(calibPos, { seed: 1 });
  const T = s!.tokens;
  const inputs = (dims: (number | string)[]) => new Map([
    ["inputs_embeds", valueInfo("inputs_embeds", OnnxDataType.FLOAT, ["b", "s", 64])],
    ["position_ids", valueInfo("position_ids", OnnxDataType.INT64, dims)],
    ["use_cache_branch", valueInfo("use_cache_branch", OnnxDataType.BOOL, [1])],
    ["num_logits_to_keep", valueInfo("num_logits_to_keep", OnnxDataType.INT64, [])],
  ]);
  const p = positions[0]!;
  const a = new SampleFeeds(s!, "inputs_embeds", inputs([3, "b", "s"])).get("position_ids");
  assert.deepEqual(a.dims, [3, 1, T]);
  assert.deepEqual(a.data, p);
  const b = new SampleFeeds(s!, "inputs_embeds", inputs(["b", "s", 3])).get("position_ids");
  assert.deepEqual(b.dims, [1, T, 3]);
  for (let t = 0; t < T; t++) for (let r = 0; r < 3; r++) assert.equal((b.data as BigInt64Array)[t * 3 + r], p[r * T + t]);
  assert.throws(() => new SampleFeeds(s!, "inputs_embeds", inputs(["b", "s"])).get("position_ids"), /multimodal position ids/);
  const f = new SampleFeeds(s!, "inputs_embeds", inputs([3, "b", "s"]));
  assert.deepEqual(f.get("use_cache_branch"), { type: "bool", dims: [1], data: Uint8Array.of(0) });
  assert.deepEqual(f.get("num_logits_to_keep"), { type: "int64", dims: [], data: BigInt64Array.of(0n) });
  // Without position ids in the set: 0..T-1 on each axis (the last sample is padded: padding gets 1).
  const plain = loadCalibrationSet(gen.calibPath, { seed: 1 });
  const last = plain[plain.length - 1]!;
  const d = new SampleFeeds(last, "inputs_embeds", inputs([3, "b", "s"])).get("position_ids");
  const row = Array.from({ length: T }, (_, t) => BigInt(last.attentionMask[t] ? t : 1));
  assert.deepEqual(d.data, BigInt64Array.from([...row, ...row, ...row]));
});

test("a 1-D decoder refuses a [3, T] calibration set before any work, naming the line", async () => {
  const plain = await generateModel({ outDir: join(tmp.path, "plain"), layers: 1, hidden: 64, samples: 4, seqLen: 30, imageTokens: 16, seed: 5 });
  await assert.rejects(
    pruneModel({ model: plain.modelPath, calib: calibPos, method: "wanda", sparsity: 0.5, out: join(tmp.path, "never"), threads: 1 } as PruneSpec),
    (e: Error) => /calib-pos\.jsonl:1/.test(e.message) && /multimodal RoPE/.test(e.message),
  );
});

/** The full decoder with `names` exposed, fed by hand (not through SampleFeeds). */
async function fullRun(names: string[]): Promise<Float32Array[][]> {
  const model = fromBinary(ModelProtoSchema, readFileSync(gen.modelPath));
  for (const n of names) model.graph!.output.push(create(ValueInfoProtoSchema, { name: n }));
  const exposed = join(tmp.path, "model", "exposed.onnx");
  writeFileSync(exposed, toBinary(ModelProtoSchema, model));
  const session = await ort.InferenceSession.create(exposed);
  const lines = readFileSync(calibPos, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { inputs_embeds: string; attention_mask?: number[] });
  const out: Float32Array[][] = [];
  for (const [s, line] of lines.entries()) {
    const x = readNpy(join(tmp.path, "model", line.inputs_embeds));
    const T = x.shape[0]!;
    const pos = readNpyInt64(join(tmp.path, "model", `calib/s${s}.pos.npy`));
    const r = await session.run({
      inputs_embeds: new ort.Tensor("float32", x.data as Float32Array, [1, T, 64]),
      attention_mask: new ort.Tensor("int64", BigInt64Array.from(line.attention_mask ?? new Array(T).fill(1), BigInt), [1, T]),
      position_ids: new ort.Tensor("int64", pos.data, [3, 1, T]),
      use_cache_branch: new ort.Tensor("bool", Uint8Array.of(0), [1]),
      num_logits_to_keep: new ort.Tensor("int64", BigInt64Array.of(0n), []),
    }, names);
    out.push(names.map((n) => toFloats(r[n]!)));
  }
  await session.release();
  return out;
}

test("Wanda with dense propagation on the multimodal-RoPE decoder matches the full model run with the set's positions", async () => {
  const out = join(tmp.path, "pruned");
  await pruneModel({ model: gen.modelPath, calib: calibPos, method: "wanda", sparsity: 0.5, propagation: "dense", out, threads: 1 } as PruneSpec);
  const a = analyzeModel(gen.modelPath);
  const samples = loadCalibrationSet(calibPos, { seed: 1 });
  const before = await modelWeights(gen.modelPath);
  const pruned = await modelWeights(join(out, "model.onnx"));
  // Block 1's query projection sees positions through block 0's attention.
  const q = a.partition.blockLinears[1]![0]!;
  const acts = (await fullRun([q.activation])).map((r) => r[0]!);
  const scale = referenceScale(acts, samples.map((s) => s.attentionMask), q.inDim);
  const expected = referenceMask(before.get(q.weight)!, q.inDim, q.outDim, scale, 0.5);
  const w = pruned.get(q.weight)!;
  let mismatches = 0;
  for (let i = 0; i < expected.length; i++) if ((w[i] === 0) !== (expected[i] === 1)) mismatches++;
  assert.ok(mismatches <= 2, `${mismatches} mask entries differ from the reference`);

  // The positions matter: the same set without them prunes block 1 differently.
  const out1d = join(tmp.path, "pruned-1d");
  await pruneModel({ model: gen.modelPath, calib: gen.calibPath, method: "wanda", sparsity: 0.5, propagation: "dense", out: out1d, threads: 1 } as PruneSpec);
  assert.notDeepEqual((await modelWeights(join(out1d, "model.onnx"))).get(q.weight), w);
  // The pruned decoder keeps its inputs and runs.
  const session = await ort.InferenceSession.create(join(out, "model.onnx"));
  assert.ok(session.inputNames.includes("num_logits_to_keep"));
  await session.release();
});
