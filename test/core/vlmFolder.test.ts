// `gen-model --layout`: complete VLM folders (genai / transformers.js, Qwen2.5-VL / LLaVA) whose
// models run in onnxruntime with the shapes the real exports have, configs that agree with the
// tokenizer, and PNG images that decode back to their pixels.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { inflateSync } from "node:zlib";
import * as ort from "onnxruntime-node";
import { generateVlmFolder } from "../../services/core/src/gen/vlm/vlmFolder.js";
import { encodePng } from "../../services/core/src/gen/vlm/png.js";
import { byteLevelAlphabet } from "../../services/core/src/gen/vlm/tokenizerFiles.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("vlm");
after(() => tmp.cleanup());

const json = (dir: string, f: string) => JSON.parse(readFileSync(join(dir, f), "utf8")) as Record<string, any>;

async function withSession<T>(path: string, fn: (s: ort.InferenceSession) => Promise<T>): Promise<T> {
  const s = await ort.InferenceSession.create(path);
  try { return await fn(s); } finally { await s.release(); }
}

test("genai Qwen2.5-VL folder: config names every model; vision merges 2x2 windows; the embedding model puts feature rows at image tokens in order", async () => {
  const r = generateVlmFolder({ layout: "genai-qwen2_5_vl", outDir: join(tmp.path, "genai") });
  const cfg = json(r.dir, "genai_config.json").model;
  for (const part of ["decoder", "embedding", "vision"]) assert.ok(existsSync(join(r.dir, cfg[part].filename)), part);
  assert.equal(cfg.type, "qwen2_5_vl");
  const proc = json(r.dir, "processor_config.json").processor.transforms.map((t: any) => t.operation.type);
  assert.deepEqual(proc, ["DecodeImage", "ConvertRGB", "Resize", "Rescale", "Normalize", "PatchImage"]);
  const tok = json(r.dir, "tokenizer.json");
  const pad = tok.added_tokens.find((t: any) => t.content === "<|image_pad|>");
  assert.equal(pad.id, cfg.image_token_id);
  assert.equal(tok.added_tokens.find((t: any) => t.content === "<|vision_start|>").id, cfg.vision_start_token_id);
  assert.match(json(r.dir, "tokenizer_config.json").chat_template, /<\|vision_start\|><\|image_pad\|><\|vision_end\|>/);

  // 4 x 4 patches of 3 * 2 * 14 * 14 values -> 4 merged tokens.
  const features = await withSession(join(r.dir, cfg.vision.filename), async (s) => {
    const out = await s.run({
      pixel_values: new ort.Tensor("float32", Float32Array.from({ length: 16 * 1176 }, (_, i) => Math.sin(i)), [16, 1176]),
      image_grid_thw: new ort.Tensor("int64", BigInt64Array.of(1n, 4n, 4n), [1, 3]),
    });
    assert.deepEqual(out["image_features"]!.dims, [4, 64]);
    return out["image_features"]!.data as Float32Array;
  });
  const img = BigInt(cfg.image_token_id);
  const ids = BigInt64Array.of(5n, img, img, 7n, img, img, 9n);
  await withSession(join(r.dir, cfg.embedding.filename), async (s) => {
    const run = async (f: Float32Array) => (await s.run({
      input_ids: new ort.Tensor("int64", ids, [1, 7]),
      image_features: new ort.Tensor("float32", f, [4, 64]),
    }))["inputs_embeds"]!;
    const a = await run(features);
    assert.deepEqual(a.dims, [1, 7, 64]);
    const rows = (t: ort.Tensor, i: number) => Array.from((t.data as Float32Array).subarray(i * 64, (i + 1) * 64));
    [1, 2, 4, 5].forEach((pos, n) => assert.deepEqual(rows(a, pos), Array.from(features.subarray(n * 64, (n + 1) * 64)), `token ${pos}`));
    const b = await run(features.map((v) => v + 1));
    for (const pos of [0, 3, 6]) assert.deepEqual(rows(b, pos), rows(a, pos), `text token ${pos} ignores the features`);
    // Text-only prompt: no features at all.
    const text = await s.run({ input_ids: new ort.Tensor("int64", BigInt64Array.of(5n, 7n), [1, 2]), image_features: new ort.Tensor("float32", new Float32Array(0), [0, 64]) });
    assert.deepEqual(rows(text["inputs_embeds"]!, 0), rows(a, 0));
  });
  await withSession(join(r.dir, cfg.decoder.filename), async (s) => {
    assert.deepEqual([...s.inputNames].sort(), ["attention_mask", "inputs_embeds", "position_ids"]);
    const T = 3;
    const feeds = { inputs_embeds: new ort.Tensor("float32", new Float32Array(T * 64), [1, T, 64]), attention_mask: new ort.Tensor("int64", new BigInt64Array(T).fill(1n), [1, T]) };
    await assert.rejects(s.run({ ...feeds, position_ids: new ort.Tensor("int64", new BigInt64Array(T), [1, T]) }));
    const out = await s.run({ ...feeds, position_ids: new ort.Tensor("int64", new BigInt64Array(3 * T), [3, 1, T]) });
    assert.deepEqual(out["logits"]!.dims, [1, T, cfg.vocab_size]);
  });
});

test("transformers.js Qwen2.5-VL and LLaVA folders: config.json, preprocessor_config.json, onnx/ models with the exports' inputs", async () => {
  const q = generateVlmFolder({ layout: "transformers-js-qwen2_5_vl", outDir: join(tmp.path, "tjq") });
  const qc = json(q.dir, "config.json");
  assert.equal(qc.model_type, "qwen2_5_vl");
  assert.deepEqual(qc.rope_scaling, { type: "mrope", mrope_section: [2, 3, 3] });
  assert.equal(json(q.dir, "preprocessor_config.json").image_processor_type, "Qwen2VLImageProcessor");
  await withSession(join(q.dir, "onnx/decoder_model_merged.onnx"), async (s) => {
    assert.deepEqual([...s.inputNames].sort(), ["attention_mask", "inputs_embeds", "num_logits_to_keep", "position_ids", "use_cache_branch"]);
  });
  await withSession(join(q.dir, "onnx/embed_tokens.onnx"), async (s) => {
    const out = await s.run({ input_ids: new ort.Tensor("int64", BigInt64Array.of(1n, 2n), [1, 2]) });
    assert.deepEqual(out["inputs_embeds"]!.dims, [1, 2, 64]);
  });

  const l = generateVlmFolder({ layout: "transformers-js-llava", outDir: join(tmp.path, "tjl") });
  const lc = json(l.dir, "config.json");
  assert.equal(lc.model_type, "llava");
  const tok = json(l.dir, "tokenizer.json");
  assert.equal(tok.added_tokens.find((t: any) => t.content === "<image>").id, lc.image_token_index);
  const pre = json(l.dir, "preprocessor_config.json");
  await withSession(join(l.dir, "onnx/vision_encoder.onnx"), async (s) => {
    const S = pre.crop_size.height as number;
    const out = await s.run({ pixel_values: new ort.Tensor("float32", new Float32Array(3 * S * S).fill(0.5), [1, 3, S, S]) });
    assert.deepEqual(out["image_features"]!.dims, [1, (S / 14) ** 2, 64]);
  });
  await withSession(join(l.dir, "onnx/decoder_model_merged.onnx"), async (s) => {
    const T = 2;
    const out = await s.run({
      inputs_embeds: new ort.Tensor("float32", new Float32Array(T * 64), [1, T, 64]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(T).fill(1n), [1, T]),
      position_ids: new ort.Tensor("int64", BigInt64Array.of(0n, 1n), [1, T]),
      use_cache_branch: new ort.Tensor("bool", Uint8Array.of(0), [1]),
      num_logits_to_keep: new ort.Tensor("int64", BigInt64Array.of(0n), []),
    });
    assert.deepEqual(out["logits"]!.dims, [1, T, 272]);
  });
  const conv = json(l.dir, "conversations.json") as unknown as Array<{ image: string; conversations: Array<{ from: string; value: string }> }>;
  assert.equal(conv.length, 3);
  assert.match(conv[0]!.conversations[0]!.value, /^<image>\n/);
  const prompts = readFileSync(join(l.dir, "prompts.jsonl"), "utf8").trim().split("\n").map((x) => JSON.parse(x) as { image?: string });
  assert.equal(prompts.filter((p) => p.image === undefined).length, 1, "one text-only sample");
  for (const p of prompts) if (p.image) assert.ok(existsSync(join(l.dir, p.image)));
});

test("byte-level alphabet covers the 256 bytes with distinct characters", () => {
  const a = byteLevelAlphabet();
  assert.equal(new Set(a).size, 256);
  assert.equal(a[0x41], "A");
  assert.equal(a[0x20], "\u0120"); // GPT-2's "Ġ" for space
});

test("PNG encoder: chunks check out and IDAT inflates back to the pixels", () => {
  const rgb = Uint8Array.from({ length: 5 * 3 * 3 }, (_, i) => (i * 37) % 256);
  const png = Buffer.from(encodePng(5, 3, rgb));
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  let at = 8;
  const chunks = new Map<string, Buffer>();
  while (at < png.length) {
    const len = png.readUInt32BE(at);
    chunks.set(png.toString("ascii", at + 4, at + 8), png.subarray(at + 8, at + 8 + len));
    at += 12 + len;
  }
  assert.deepEqual([...chunks.keys()], ["IHDR", "IDAT", "IEND"]);
  assert.equal(chunks.get("IHDR")!.readUInt32BE(0), 5);
  assert.equal(chunks.get("IHDR")!.readUInt32BE(4), 3);
  const raw = inflateSync(chunks.get("IDAT")!);
  for (let y = 0; y < 3; y++) {
    assert.equal(raw[y * 16], 0);
    assert.deepEqual([...raw.subarray(y * 16 + 1, (y + 1) * 16)], [...rgb.subarray(y * 15, (y + 1) * 15)]);
  }
});
