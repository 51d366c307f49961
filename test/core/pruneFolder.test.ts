// `prune --model DIR`: the decoder of a genai or transformers.js folder is found and pruned; the
// output folder has the same files, every other one byte for byte, and the pruned decoder loads
// and runs under its original names. Quantized decoders and bad folders are refused clearly.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { GraphProtoSchema, ModelProtoSchema, NodeProtoSchema, OperatorSetIdProtoSchema } from "../../services/gen/onnx_pb.js";
import { generateVlmFolder } from "../../services/core/src/gen/vlm/vlmFolder.js";
import { writeCalibration } from "../../services/core/src/gen/calibGen.js";
import { pruneModelFolder } from "../../services/core/src/modelDir/pruneFolder.js";
import { openModelFolder } from "../../services/core/src/modelDir/modelFolder.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { CLI, tempDir } from "../support/fixtures.js";

const run = promisify(execFile);
const tmp = tempDir("prunefolder");
after(() => tmp.cleanup());

let calib: string;
before(() => {
  calib = writeCalibration({ samples: 3, seqLen: 24, imageTokens: 8, padTokens: 0 }, 64, false, 3, join(tmp.path, "calib")).calibPath;
});

function files(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else out.push(relative(dir, join(d, e.name)));
    }
  };
  walk(dir);
  return out.sort();
}

async function logits(model: string, positions: "3d" | "1d", extra: Record<string, ort.Tensor> = {}): Promise<Float32Array> {
  const s = await ort.InferenceSession.create(model);
  const T = 4;
  const pos = positions === "3d" ? new ort.Tensor("int64", BigInt64Array.from({ length: 3 * T }, (_, i) => BigInt(i % T)), [3, 1, T]) : new ort.Tensor("int64", BigInt64Array.from({ length: T }, (_, i) => BigInt(i)), [1, T]);
  const out = await s.run({
    inputs_embeds: new ort.Tensor("float32", Float32Array.from({ length: T * 64 }, (_, i) => Math.cos(i)), [1, T, 64]),
    attention_mask: new ort.Tensor("int64", new BigInt64Array(T).fill(1n), [1, T]),
    position_ids: pos, ...extra,
  });
  await s.release();
  return out["logits"]!.data as Float32Array;
}

test("genai folder: same files, all but the decoder byte for byte; the pruned decoder runs under its own names", async () => {
  const src = generateVlmFolder({ layout: "genai-qwen2_5_vl", outDir: join(tmp.path, "genai") });
  const out = join(tmp.path, "genai-pruned");
  const report = await pruneModelFolder({ model: src.dir, calib, out, method: "atv", sparsity: 0.5, threads: 1 } as PruneSpec);
  assert.deepEqual(files(out), [...files(src.dir), "report.json"].sort());
  for (const f of files(src.dir)) {
    if (f === "model.onnx" || f === "model.onnx.data") continue;
    assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(src.dir, f))), f);
  }
  assert.equal(report.totals.sparsity, 0.5);
  assert.equal(report.spec["decoder"], "model.onnx");
  assert.ok(existsSync(join(out, "report.json")));
  const dense = await logits(join(src.dir, "model.onnx"), "3d");
  const pruned = await logits(join(out, "model.onnx"), "3d");
  assert.equal(pruned.length, dense.length);
  assert.notDeepEqual(pruned, dense);
  assert.ok(pruned.every(Number.isFinite));
  // The folder's own config still finds everything.
  assert.equal(openModelFolder(out).decoder, "model.onnx");
});

test("transformers.js folder: onnx/decoder_model_merged.onnx and its _data keep their names; --out not empty is refused", async () => {
  const src = generateVlmFolder({ layout: "transformers-js-llava", outDir: join(tmp.path, "tjs") });
  const out = join(tmp.path, "tjs-pruned");
  await pruneModelFolder({ model: src.dir, calib, out, method: "wanda", sparsity: 0.5, threads: 1 } as PruneSpec);
  assert.deepEqual(files(out), [...files(src.dir), "report.json"].sort());
  assert.ok(readFileSync(join(out, "onnx/decoder_model_merged.onnx")).includes(Buffer.from("decoder_model_merged.onnx_data")));
  assert.ok(readFileSync(join(out, "onnx/vision_encoder.onnx_data")).equals(readFileSync(join(src.dir, "onnx/vision_encoder.onnx_data"))));
  const extra = { use_cache_branch: new ort.Tensor("bool", Uint8Array.of(0), [1]), num_logits_to_keep: new ort.Tensor("int64", BigInt64Array.of(0n), []) };
  assert.notDeepEqual(await logits(join(out, "onnx/decoder_model_merged.onnx"), "1d", extra), await logits(join(src.dir, "onnx/decoder_model_merged.onnx"), "1d", extra));
  await assert.rejects(pruneModelFolder({ model: src.dir, calib, out, method: "wanda", sparsity: 0.5, threads: 1 } as PruneSpec), /not empty/);
  await pruneModelFolder({ model: src.dir, calib, out, method: "wanda", sparsity: 0.5, threads: 1, force: true } as PruneSpec);
  assert.deepEqual(files(out), [...files(src.dir), "report.json"].sort());
});

test("quantized decoders and unknown folders are refused, nothing written", async () => {
  const q = join(tmp.path, "quant");
  mkdirSync(join(q, "onnx"), { recursive: true });
  writeFileSync(join(q, "config.json"), "{}");
  const model = create(ModelProtoSchema, {
    irVersion: 8n,
    opsetImport: [create(OperatorSetIdProtoSchema, { domain: "", version: 17n })],
    graph: create(GraphProtoSchema, { name: "g", node: [create(NodeProtoSchema, { opType: "MatMulNBits", domain: "com.microsoft", input: ["a", "b"], output: ["c"] })] }),
  });
  writeFileSync(join(q, "onnx/decoder_model_merged.onnx"), toBinary(ModelProtoSchema, model));
  const out = join(tmp.path, "never");
  await assert.rejects(pruneModelFolder({ model: q, calib, out, method: "wanda", sparsity: 0.5 } as PruneSpec), /MatMulNBits weights cannot be pruned/);
  await assert.rejects(pruneModelFolder({ model: q, calib, out, method: "wanda", sparsity: 0.5 } as PruneSpec, { dtype: "q4" }), /quantized decoders cannot be pruned/);
  await assert.rejects(pruneModelFolder({ model: q, calib, out, method: "wanda", sparsity: 0.5 } as PruneSpec, { dtype: "fp16" }), /no decoder_model_merged_fp16\.onnx/);
  const empty = join(tmp.path, "empty");
  mkdirSync(empty);
  await assert.rejects(pruneModelFolder({ model: empty, calib, out, method: "wanda", sparsity: 0.5 } as PruneSpec), /unknown model folder layout/);
  assert.ok(!existsSync(out));
  assert.deepEqual(readdirSync(tmp.path).filter((f) => f.includes("partial")), []);
});

test("CLI: atvp prune --model DIR prunes the folder; atvp submit sends a folder on to the coordinator", async () => {
  const src = generateVlmFolder({ layout: "transformers-js-qwen2_5_vl", outDir: join(tmp.path, "cli-src") });
  const out = join(tmp.path, "cli-out");
  await run(process.execPath, [CLI, "prune", "--model", src.dir, "--calib", calib, "--method", "wanda", "--out", out, "--dtype", "fp32", "--threads", "1"]);
  assert.deepEqual(files(out), [...files(src.dir), "report.json"].sort());
  // The folder may live on the cluster's volume: submit checks the job fields and leaves the
  // folder to the coordinator (test/cluster/mropeCluster.test.ts runs one), so it gets as far as
  // connecting (nothing listens on port 1).
  const r = await run(process.execPath, [CLI, "submit", "--model", src.dir, "--calib", calib, "--out", join(tmp.path, "x"), "--dtype", "fp32", "--coordinator", "127.0.0.1:1"]).catch((e: { stderr: string; code: number }) => e);
  assert.equal((r as { code: number }).code, 1);
  assert.match((r as { stderr: string }).stderr, /\[UNAVAILABLE\] SubmitJob/);
});
