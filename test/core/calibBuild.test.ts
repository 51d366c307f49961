// `atvp calib`: hand-checked Qwen patch order and get_rope_index, the image-feature merge, both
// folder layouts and LLaVA, every bad input named by its line, and the result pruned as a folder
// whose decoder loads and runs again.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { generateVlmFolder, type VlmFolderResult } from "../../services/core/src/gen/vlm/vlmFolder.js";
import { encodePng } from "../../services/core/src/gen/vlm/png.js";
import { buildCalibration, type CalibBuildOptions } from "../../services/core/src/calib/build/buildCalib.js";
import { ropeIndex } from "../../services/core/src/calib/build/ropeIndex.js";
import { mergeImageFeatures } from "../../services/core/src/calib/build/featureMerge.js";
import { loadProcessors } from "../../services/core/src/calib/build/vlmProcessors.js";
import { openModelFolder } from "../../services/core/src/modelDir/modelFolder.js";
import { loadCalibrationSet } from "../../services/core/src/calib/calibSet.js";
import { readNpy, readNpyInt64 } from "../../services/core/src/calib/npy.js";
import { pruneModelFolder } from "../../services/core/src/modelDir/pruneFolder.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { runExposed } from "../support/reference.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("calibbuild");
after(() => tmp.cleanup());

let genai: VlmFolderResult;
let tjs: VlmFolderResult;
let llava: VlmFolderResult;
before(() => {
  genai = generateVlmFolder({ layout: "genai-qwen2_5_vl", outDir: join(tmp.path, "genai") });
  tjs = generateVlmFolder({ layout: "transformers-js-qwen2_5_vl", outDir: join(tmp.path, "tjs") });
  llava = generateVlmFolder({ layout: "transformers-js-llava", outDir: join(tmp.path, "llava") });
});

const build = (o: Partial<CalibBuildOptions> & Pick<CalibBuildOptions, "modelDir">) =>
  buildCalibration({ out: join(tmp.path, `cal-${Math.random().toString(36).slice(2)}`), ...o });

test("get_rope_index by hand: text counts up, an image takes (start, start+row, start+col), text resumes at max+1", () => {
  const I = 9; // image token
  // t t S [2x3 merged grid from a 4x6 patch grid] E t, then a second 2x2 image.
  const ids = [1, 1, 2, I, I, I, I, I, I, 3, 1, I, I, I, I, 1];
  const pos = ropeIndex(ids, I, [{ t: 1, h: 4, w: 6 }, { t: 1, h: 4, w: 4 }], 2);
  const T = ids.length;
  const rows = [0, 1, 2].map((r) => Array.from(pos.subarray(r * T, (r + 1) * T), Number));
  assert.deepEqual(rows[0], [0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 8, 8, 8, 10]);
  assert.deepEqual(rows[1], [0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8, 8, 9, 9, 10]);
  assert.deepEqual(rows[2], [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 8, 9, 10]);
  assert.throws(() => ropeIndex([I, I], I, [], 2), /only 0 image grids/);
});

test("the merge puts feature rows, in order, at the image tokens; counts must agree", () => {
  const embeds = Float32Array.from([0, 0, 1, 1, 2, 2, 3, 3]); // 4 tokens, hidden 2
  const merged = mergeImageFeatures(embeds, 2, [5, 7, 5, 7], 7, Float32Array.from([10, 11, 20, 21]));
  assert.deepEqual(Array.from(merged), [0, 0, 10, 11, 2, 2, 20, 21]);
  assert.throws(() => mergeImageFeatures(embeds, 2, [5, 7, 5, 7], 7, Float32Array.from([10, 11])), /more image tokens/);
  assert.throws(() => mergeImageFeatures(embeds, 2, [5, 7, 5, 5], 7, Float32Array.from([10, 11, 20, 21])), /2 image-feature rows for 1/);
});

test("Qwen patch order by hand on a 56x56 image (4x4 patches, 2x2 merge), the same for genai's processor_config.json and preprocessor_config.json", async () => {
  const W = 56;
  const rgb = Uint8Array.from({ length: W * W * 3 }, (_, i) => (i * 7919) % 251);
  const png = join(tmp.path, "order.png");
  writeFileSync(png, encodePng(W, W, rgb));
  const mean = [0.48145466, 0.4578275, 0.40821073];
  const std = [0.26862954, 0.26130258, 0.27577711];
  const outputs: Float32Array[] = [];
  for (const dir of [tjs.dir, genai.dir]) {
    const p = await loadProcessors(openModelFolder(dir));
    const out = await p.process((await p.readImage(png)).image);
    assert.deepEqual(out.dims, [16, 3 * 2 * 14 * 14]);
    assert.deepEqual(out.grid, [1, 4, 4]);
    // Row r: merge window r/4 (2x2 windows in raster order), position r%4 inside it (raster);
    // column c: channel, temporal copy, row and column inside the 14x14 patch.
    let maxErr = 0;
    for (let r = 0; r < 16; r++) for (let c = 0; c < 1176; c++) {
      const win = Math.floor(r / 4), bh = Math.floor(win / 2), bw = win % 2, mh = Math.floor((r % 4) / 2), mw = r % 2;
      const ch = Math.floor(c / (14 * 14 * 2)), py = Math.floor(c / 14) % 14, px = c % 14;
      const y = (bh * 2 + mh) * 14 + py, x = (bw * 2 + mw) * 14 + px;
      const want = (rgb[(y * W + x) * 3 + ch]! / 255 - mean[ch]!) / std[ch]!;
      maxErr = Math.max(maxErr, Math.abs(want - out.pixels[r * 1176 + c]!));
    }
    assert.ok(maxErr < 1e-5, `max error ${maxErr}`);
    outputs.push(out.pixels);
  }
  assert.deepEqual(outputs[1], outputs[0]);
});

async function visionFeatures(dir: string, model: string, image: string): Promise<Float32Array> {
  const p = await loadProcessors(openModelFolder(dir));
  const out = await p.process((await p.readImage(image)).image);
  const s = await ort.InferenceSession.create(join(dir, model));
  const feeds: Record<string, ort.Tensor> = { pixel_values: new ort.Tensor("float32", out.pixels, out.dims) };
  if (out.grid) feeds["image_grid_thw"] = new ort.Tensor("int64", BigInt64Array.from(out.grid, BigInt), [1, 3]);
  const r = await s.run(feeds);
  await s.release();
  return r["image_features"]!.data as Float32Array;
}

test("Qwen2.5-VL, both layouts: expanded placeholders, image_mask, [3, T] positions, features merged at the image tokens", async () => {
  const results = [];
  for (const f of [genai, tjs]) {
    const r = await build({ modelDir: f.dir, prompts: join(f.dir, f.prompts) });
    assert.deepEqual(readdirSync(r.out).sort(), ["calib.jsonl", "s0.npy", "s0.pos.npy", "s1.npy", "s1.pos.npy", "s2.npy", "s2.pos.npy", "s3.npy", "s3.pos.npy"]);
    const lines = readFileSync(r.calibPath, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, any>);
    assert.deepEqual(Object.keys(lines[0]!), ["inputs_embeds", "image_mask", "attention_mask", "position_ids", "input_ids"]);
    // image1.png is 84x56: a 4x6 patch grid -> 6 tokens between <|vision_start|> (259) and <|vision_end|> (260).
    const ids = lines[1]!["input_ids"] as number[];
    const start = ids.indexOf(259);
    assert.deepEqual(ids.slice(start, start + 8), [259, 262, 262, 262, 262, 262, 262, 260]);
    assert.deepEqual(lines[1]!["image_mask"], ids.map((id) => (id === 262 ? 1 : 0)));
    assert.equal(ids[0], 257, "no BOS beyond the template's own <|im_start|>");
    const text = Buffer.from(ids.filter((id) => id < 256)).toString("latin1");
    assert.match(text, /^system\nYou are a helpful assistant\.\nuser\nDescribe the colours\.\nassistant\nMostly green with a warm stripe\.\n$/);
    assert.ok(!("image" in lines[3]!) && (lines[3]!["image_mask"] as number[]).every((v) => v === 0), "text-only sample");
    const pos = readNpyInt64(join(r.out, "s1.pos.npy"));
    assert.deepEqual(pos.shape, [3, ids.length]);
    assert.deepEqual(pos.data, ropeIndex(ids, 262, [{ t: 1, h: 4, w: 6 }], 2));
    // Image rows of the embeddings are the vision model's features, in order.
    const features = await visionFeatures(f.dir, f.vision, join(f.dir, "images/image1.png"));
    const e = readNpy(join(r.out, "s1.npy"));
    assert.deepEqual(e.shape, [ids.length, 64]);
    const data = e.data as Float32Array;
    const imageRows = ids.flatMap((id, t) => (id === 262 ? [t] : []));
    imageRows.forEach((t, n) => assert.deepEqual(data.subarray(t * 64, (t + 1) * 64), features.subarray(n * 64, (n + 1) * 64), `row ${t}`));
    results.push(lines);
  }
  // Same tokenizer and processor: the two layouts agree on everything but the embeddings.
  for (const [i, l] of results[0]!.entries()) {
    assert.deepEqual(results[1]![i]!["input_ids"], l["input_ids"]);
    assert.deepEqual(results[1]![i]!["image_mask"], l["image_mask"]);
  }
});

test("LLaVA: <image> expanded to as many tokens as the vision model returns rows; 1-D positions; conversations human/gpt", async () => {
  const r = await build({ modelDir: llava.dir, conversations: join(llava.dir, "conversations.json") });
  const [line] = readFileSync(r.calibPath, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, any>);
  const ids = line!["input_ids"] as number[];
  assert.equal(ids.filter((id) => id === 259).length, 16);
  const bytes = (xs: number[]) => Buffer.from(xs.filter((id) => id >= 3 && id < 259).map((id) => id - 3)).toString("latin1");
  assert.equal(bytes(ids), "USER: \nWhat is in this picture? ASSISTANT: A bright square on a dark field. ");
  const pos = readNpyInt64(join(r.out, "s0.pos.npy"));
  assert.deepEqual(pos.shape, [ids.length]);
  assert.deepEqual(Array.from(pos.data, Number), ids.map((_, t) => t));
  const features = await visionFeatures(llava.dir, llava.vision, join(llava.dir, "images/image0.png"));
  const e = readNpy(join(r.out, "s0.npy")).data as Float32Array;
  const first = ids.indexOf(259);
  assert.deepEqual(e.subarray(first * 64, (first + 16) * 64), features);
});

test("--nsamples takes a seeded subset, in input order", async () => {
  const a = await build({ modelDir: llava.dir, prompts: join(llava.dir, llava.prompts), nsamples: 2, seed: 3 });
  const b = await build({ modelDir: llava.dir, prompts: join(llava.dir, llava.prompts), nsamples: 2, seed: 3 });
  const lines = (p: string) => readFileSync(p, "utf8").trim().split("\n");
  assert.equal(lines(a.calibPath).length, 2);
  assert.deepEqual(lines(a.calibPath).map((l) => JSON.parse(l).input_ids), lines(b.calibPath).map((l) => JSON.parse(l).input_ids));
});

test("bad inputs: a clear error naming the line, and no CALDIR", async () => {
  const dir = tjs.dir;
  const write = (name: string, text: string) => { const p = join(tmp.path, name); writeFileSync(p, text); return p; };
  writeFileSync(join(tmp.path, "garbage.png"), "not a png");
  writeFileSync(join(tmp.path, "tiny.png"), encodePng(28, 28, new Uint8Array(28 * 28 * 3).fill(128)));
  cpSync(join(dir, "images"), join(tmp.path, "images"), { recursive: true });
  const ok = JSON.stringify({ image: "images/image0.png", prompt: "hi" });
  const cases: Array<[string, Partial<CalibBuildOptions>, RegExp]> = [
    ["missing image", { prompts: write("p1.jsonl", ok + "\n" + JSON.stringify({ image: "nope.png", prompt: "x" }) + "\n") }, /p1\.jsonl:2: image .*nope\.png not found/],
    ["undecodable image", { prompts: write("p2.jsonl", JSON.stringify({ image: "garbage.png", prompt: "x" }) + "\n") }, /p2\.jsonl:1: cannot decode image/],
    ["below min_pixels", { prompts: write("p3.jsonl", "\n" + JSON.stringify({ image: "tiny.png", prompt: "x" }) + "\n") }, /p3\.jsonl:2: image .*28x28 = 784 pixels, below the processor's min_pixels 3136/],
    ["over --max-tokens", { prompts: write("p4.jsonl", ok + "\n"), maxTokens: 20 }, /p4\.jsonl:1: the sample has \d+ tokens, over --max-tokens 20/],
    ["bad JSON", { prompts: write("p5.jsonl", "{nope\n") }, /p5\.jsonl:1: not valid JSON/],
    ["markers vs images", { conversations: write("c1.json", JSON.stringify([{ id: "a", image: "images/image0.png", conversations: [{ from: "human", value: "<image>\n<image>\nhi" }, { from: "gpt", value: "x" }] }])) }, /c1\.json: entry 0 \(id a\): 2 <image> markers for 1 image/],
    ["image without marker", { conversations: write("c2.json", JSON.stringify([{ id: "b", image: "images/image0.png", conversations: [{ from: "human", value: "hi" }] }])) }, /entry 0 \(id b\): 0 <image> markers for 1 image/],
  ];
  for (const [label, o, re] of cases) {
    const out = join(tmp.path, `bad-${label.replace(/\W+/g, "-")}`);
    await assert.rejects(buildCalibration({ modelDir: dir, out, ...o }), re, label);
    assert.ok(!existsSync(out), `${label}: CALDIR must not appear`);
  }
  assert.deepEqual(readdirSync(tmp.path).filter((f) => f.includes(".partial-")), []);

  const prompts = join(tmp.path, "p1.jsonl");
  const noTok = join(tmp.path, "no-tokenizer");
  cpSync(dir, noTok, { recursive: true });
  rmSync(join(noTok, "tokenizer.json"));
  await assert.rejects(build({ modelDir: noTok, prompts }), /no tokenizer in the model folder/);
  const noTemplate = join(tmp.path, "no-template");
  cpSync(dir, noTemplate, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(noTemplate, "tokenizer_config.json"), "utf8"));
  delete cfg.chat_template;
  writeFileSync(join(noTemplate, "tokenizer_config.json"), JSON.stringify(cfg));
  await assert.rejects(build({ modelDir: noTemplate, prompts }), /no chat template in the model folder/);
  await assert.rejects(build({ modelDir: tmp.path, prompts }), /unknown model folder layout/);
  const other = join(tmp.path, "other-family");
  cpSync(dir, other, { recursive: true });
  writeFileSync(join(other, "config.json"), JSON.stringify({ model_type: "idefics3" }));
  await assert.rejects(build({ modelDir: other, prompts }), /"idefics3".*not supported yet/);
});

test("calib -> prune --model DIR (ATV) -> the pruned decoder loads and runs on the calibration samples", async () => {
  const cal = await build({ modelDir: genai.dir, prompts: join(genai.dir, genai.prompts) });
  const out = join(tmp.path, "pruned-genai");
  const report = await pruneModelFolder({ model: genai.dir, calib: cal.calibPath, out, method: "atv", sparsity: 0.5, threads: 1 } as PruneSpec);
  assert.ok(report.blocks.every((b) => b.nVisual.reduce((a, n) => a + n, 0) === 22), "4 + 6 + 12 visual tokens per block");
  const samples = loadCalibrationSet(cal.calibPath, { seed: 1 });
  const [run] = await runExposed(join(out, "model.onnx"), ["logits"], samples.slice(0, 1), "inputs_embeds");
  const logits = run!.get("logits")!;
  assert.equal(logits.length, samples[0]!.tokens * 272);
  assert.ok(logits.every(Number.isFinite));
  // The pruned folder is a model folder again: its config, tokenizer, vision and embedding
  // models (copied byte for byte) give the same calibration set.
  const again = await build({ modelDir: out, prompts: join(genai.dir, genai.prompts) });
  assert.equal(readFileSync(again.calibPath, "utf8"), readFileSync(cal.calibPath, "utf8"));
  for (const f of readdirSync(cal.out)) assert.ok(readFileSync(join(again.out, f)).equals(readFileSync(join(cal.out, f))), f);
});

test("@huggingface/transformers shares our onnxruntime-node (one copy)", async () => {
  const { createRequire } = await import("node:module");
  const ours = createRequire(import.meta.url).resolve("onnxruntime-node");
  const theirs = createRequire(createRequire(import.meta.url).resolve("@huggingface/transformers")).resolve("onnxruntime-node");
  assert.equal(theirs, ours);
});
