/**
 * `atvp calib`: a calibration set from images and text for a model folder. Each sample is
 * rendered with the model's chat template, its images preprocessed as the Hugging Face
 * processor does and run once through the vision model, the image placeholders expanded to one
 * token per feature row, and the embeddings built: by the folder's embedding model, which merges
 * the image features itself (onnxruntime-genai), or by embed_tokens plus our merge
 * (transformers.js). Positions follow the decoder: Qwen's multimodal RoPE [3, T], 1-D [T], or
 * none. CALDIR is written under a temporary name and renamed: complete or absent.
 */
import { existsSync } from "node:fs";
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import type * as Ort from "onnxruntime-node";
import { CalibrationError, InvalidArgumentError, OutputExistsError, RuntimeError } from "../../errors.js";
import { openModelFolder, refuseQuantized, type ModelFolder } from "../../modelDir/modelFolder.js";
import { readModel } from "../../onnx/modelFile.js";
import { ortFloats } from "../../runtime/ortFloats.js";
import { seededOrder } from "../calibSet.js";
import { encodeNpy, writeNpyInt64 } from "../npy.js";
import { readConversations, readPrompts, type ChatSample } from "./calibInputs.js";
import { mergeImageFeatures } from "./featureMerge.js";
import { ropeIndex, type ImageGrid } from "./ropeIndex.js";
import { loadProcessors, type VlmProcessors } from "./vlmProcessors.js";

export const CALIB_JSONL = "calib.jsonl";

export interface CalibBuildOptions {
  modelDir: string;
  prompts?: string;
  conversations?: string;
  out: string;
  imageRoot?: string;
  nsamples?: number;
  seed?: number;
  maxTokens?: number;
  device?: "cpu" | "cuda" | "auto";
  layout?: string;
  dtype?: string;
  force?: boolean;
  onProgress?: (e: CalibEvent) => void;
}

export type CalibEvent =
  | { type: "calib_started"; samples: number; layout: string; family: string }
  | { type: "sample_done"; index: number; of: number; where: string; tokens: number; images: number; imageTokens: number }
  | { type: "calib_finished"; out: string; samples: number; tokens: number; seconds: number };

export interface CalibBuildResult { out: string; calibPath: string; samples: number; tokens: number }

type PositionKind = "mrope" | "1d" | "none";

export async function buildCalibration(o: CalibBuildOptions): Promise<CalibBuildResult> {
  const started = performance.now();
  if ((o.prompts === undefined) === (o.conversations === undefined)) throw new InvalidArgumentError("--prompts", "give exactly one of --prompts P.jsonl or --conversations C.json");
  if (o.maxTokens !== undefined && (!Number.isInteger(o.maxTokens) || o.maxTokens < 1)) throw new InvalidArgumentError("--max-tokens", `must be a positive integer, got ${o.maxTokens}`);
  const out = resolve(o.out);
  if (existsSync(out) && !o.force) throw new OutputExistsError(out, "already exists; choose another --out folder or pass --force to replace it");
  const folder = openModelFolder(resolve(o.modelDir), { layout: o.layout, dtype: o.dtype });
  if (!folder.vision || !folder.embedding) {
    throw new InvalidArgumentError(folder.dir, `the ${folder.layout} folder has no ${folder.vision ? "embedding" : "vision"} model (${folder.layout === "genai" ? "genai_config.json model.vision / model.embedding" : "onnx/vision_encoder*.onnx, onnx/embed_tokens*.onnx"})`);
  }
  const all = o.prompts !== undefined ? readPrompts(resolve(o.prompts), o.imageRoot) : readConversations(resolve(o.conversations!), o.imageRoot);
  const chosen = select(all, o.nsamples, o.seed ?? 21);
  const proc = await loadProcessors(folder);
  const positions = positionKind(folder);
  const ort = await import("onnxruntime-node");
  const device = o.device ?? "cpu";
  const vision = await openSession(ort, join(folder.dir, folder.vision), device);
  const embedding = await openSession(ort, join(folder.dir, folder.embedding), device);
  const staging = join(dirname(out), `.${basename(out)}.partial-${process.pid}`);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  o.onProgress?.({ type: "calib_started", samples: chosen.length, layout: folder.layout, family: proc.tokens.family });
  try {
    const lines: string[] = [];
    let tokens = 0;
    for (const [i, sample] of chosen.entries()) {
      const built = await buildSample(sample, folder, proc, vision, embedding, ort, o.maxTokens, positions);
      const line: Record<string, unknown> = { inputs_embeds: `s${i}.npy` };
      await writeFile(join(staging, `s${i}.npy`), encodeNpy(built.embeds));
      line["image_mask"] = built.imageMask;
      line["attention_mask"] = built.ids.map(() => 1);
      if (built.positions) {
        writeNpyInt64(join(staging, `s${i}.pos.npy`), built.positions);
        line["position_ids"] = `s${i}.pos.npy`;
      }
      line["input_ids"] = built.ids;
      lines.push(JSON.stringify(line));
      tokens += built.ids.length;
      o.onProgress?.({ type: "sample_done", index: i, of: chosen.length, where: sample.where, tokens: built.ids.length, images: sample.images.length, imageTokens: built.imageMask.reduce((a, b) => a + b, 0) });
    }
    await writeFile(join(staging, CALIB_JSONL), lines.join("\n") + "\n");
    if (existsSync(out)) await rm(out, { recursive: true, force: true });
    await rename(staging, out);
    const seconds = (performance.now() - started) / 1000;
    o.onProgress?.({ type: "calib_finished", out, samples: chosen.length, tokens, seconds });
    return { out, calibPath: join(out, CALIB_JSONL), samples: chosen.length, tokens };
  } finally {
    await rm(staging, { recursive: true, force: true });
    await vision.release();
    await embedding.release();
  }
}

/** A seeded subset (the same shuffle as prune's --nsamples), kept in input order. */
function select(samples: ChatSample[], nsamples: number | undefined, seed: number): ChatSample[] {
  if (nsamples === undefined) return samples;
  if (!Number.isInteger(nsamples) || nsamples < 1) throw new InvalidArgumentError("--nsamples", `must be a positive integer, got ${nsamples}`);
  if (nsamples > samples.length) throw new InvalidArgumentError("--nsamples", `asks for ${nsamples} samples; the input has ${samples.length}`);
  return seededOrder(samples.length, seed).slice(0, nsamples).sort((a, b) => a - b).map((i) => samples[i]!);
}

function positionKind(folder: ModelFolder): PositionKind {
  const path = join(folder.dir, folder.decoder);
  refuseQuantized(path);
  const name = folder.names?.decoder["position_ids"] ?? "position_ids";
  const input = readModel(path).model.graph?.input.find((i) => i.name === name);
  if (!input) return "none";
  const t = input.type?.value;
  const rank = t?.case === "tensorType" ? (t.value.shape?.dim.length ?? 0) : 0;
  return rank === 3 ? "mrope" : "1d";
}

async function openSession(ort: typeof Ort, path: string, device: "cpu" | "cuda" | "auto"): Promise<Ort.InferenceSession> {
  const tryCreate = (ep: string) => ort.InferenceSession.create(path, { executionProviders: [ep], logSeverityLevel: 3 });
  if (device === "cpu") return tryCreate("cpu");
  try {
    return await tryCreate("cuda");
  } catch (err) {
    if (device === "auto") return tryCreate("cpu");
    throw new RuntimeError(path, `cannot open on cuda (${(err as Error).message}); --device auto falls back to the CPU`, { cause: err });
  }
}

interface BuiltSample {
  ids: number[];
  imageMask: number[];
  embeds: { dtype: "float32" | "float16"; shape: number[]; data: Float32Array | Uint16Array };
  positions?: { shape: number[]; data: BigInt64Array };
}

async function buildSample(
  sample: ChatSample, folder: ModelFolder, proc: VlmProcessors, vision: Ort.InferenceSession, embedding: Ort.InferenceSession,
  ort: typeof Ort, maxTokens: number | undefined, positions: PositionKind,
): Promise<BuiltSample> {
  const { where } = sample;
  const visionNames = folder.names?.vision ?? {};
  const features: Float32Array[] = [];
  const grids: ImageGrid[] = [];
  let hidden = 0;
  for (const path of sample.images) {
    if (!existsSync(path)) throw new CalibrationError(where, `image ${path} not found (image paths are relative to the input file's folder unless --image-root is given)`);
    let read;
    try {
      read = await proc.readImage(path);
    } catch (err) {
      throw new CalibrationError(where, `cannot decode image ${path} (${(err as Error).message})`, { cause: err });
    }
    if (proc.minPixels > 0 && read.info.width * read.info.height < proc.minPixels) {
      throw new CalibrationError(where, `image ${path} is ${read.info.width}x${read.info.height} = ${read.info.width * read.info.height} pixels, below the processor's min_pixels ${proc.minPixels}`);
    }
    const p = await proc.process(read.image);
    const feeds: Record<string, Ort.Tensor> = { [visionNames["pixel_values"] ?? "pixel_values"]: new ort.Tensor("float32", p.pixels, p.dims) };
    if (p.grid) {
      const gridName = visionNames["image_grid_thw"] ?? "image_grid_thw";
      if (vision.inputNames.includes(gridName)) feeds[gridName] = new ort.Tensor("int64", BigInt64Array.from(p.grid, BigInt), [1, 3]);
      grids.push({ t: p.grid[0], h: p.grid[1], w: p.grid[2] });
    }
    const outName = visionNames["image_features"] ?? vision.outputNames[0]!;
    const f = (await vision.run(feeds, [outName]))[outName]!;
    hidden = f.dims[f.dims.length - 1]!;
    const rows = ortFloats(f, path);
    if (p.grid) {
      const expected = (p.grid[0] * p.grid[1] * p.grid[2]) / (proc.mergeSize * proc.mergeSize);
      if (rows.length / hidden !== expected) throw new CalibrationError(where, `the vision model returned ${rows.length / hidden} feature rows for image ${path}; its grid ${p.grid.join("x")} / merge ${proc.mergeSize}² needs ${expected}`);
    }
    features.push(rows);
  }

  const rendered = proc.render(sample.messages);
  const pieces = rendered.split(proc.tokens.placeholder);
  if (pieces.length - 1 !== sample.images.length) {
    throw new CalibrationError(where, `the chat template wrote ${pieces.length - 1} ${proc.tokens.placeholder} placeholder(s) for ${sample.images.length} image(s)`);
  }
  const text = pieces.reduce((acc, piece, k) => acc + proc.tokens.placeholder.repeat(features[k - 1]!.length / hidden) + piece);
  const ids = proc.encode(text);
  if (maxTokens !== undefined && ids.length > maxTokens) throw new CalibrationError(where, `the sample has ${ids.length} tokens, over --max-tokens ${maxTokens}`);
  const imageMask: number[] = ids.map((id) => (id === proc.tokens.imageTokenId ? 1 : 0));
  const expectedImageTokens = features.reduce((a, f) => a + f.length / hidden, 0);
  if (imageMask.reduce((a, b) => a + b, 0) !== expectedImageTokens) {
    throw new CalibrationError(where, `the text itself contains ${proc.tokens.placeholder}: the image tokens do not match the ${sample.images.length} image(s)`);
  }

  const T = ids.length;
  const idTensor = new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, T]);
  let embeds: BuiltSample["embeds"];
  if (folder.layout === "genai") {
    const names = folder.names!.embedding;
    const allFeatures = concat(features);
    const width = hidden || Number(folder.config["model"]?.["decoder"]?.["hidden_size"] ?? 0);
    const outName = names["inputs_embeds"] ?? "inputs_embeds";
    const r = (await embedding.run({
      [names["input_ids"] ?? "input_ids"]: idTensor,
      [names["image_features"] ?? "image_features"]: new ort.Tensor("float32", allFeatures, [allFeatures.length / Math.max(width, 1), width]),
    }, [outName]))[outName]!;
    embeds = asNpy(r, T);
  } else {
    const outName = embedding.outputNames[0]!;
    const r = (await embedding.run({ [embedding.inputNames[0]!]: idTensor }, [outName]))[outName]!;
    const H = r.dims[r.dims.length - 1]!;
    const merged = features.length === 0 ? ortFloats(r, outName) : mergeImageFeatures(ortFloats(r, outName), H, ids, proc.tokens.imageTokenId, concat(features));
    embeds = { dtype: "float32", shape: [T, H], data: merged };
  }

  let pos: BuiltSample["positions"];
  if (positions === "mrope") pos = { shape: [3, T], data: ropeIndex(ids, proc.tokens.imageTokenId, grids, proc.mergeSize) };
  else if (positions === "1d") pos = { shape: [T], data: BigInt64Array.from({ length: T }, (_, t) => BigInt(t)) };
  return { ids, imageMask, embeds, ...(pos ? { positions: pos } : {}) };
}

function concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** Embeddings as the embedding model returned them (float16 kept as float16). */
function asNpy(t: Ort.Tensor, T: number): BuiltSample["embeds"] {
  const H = t.dims[t.dims.length - 1]!;
  if (t.type === "float16") return { dtype: "float16", shape: [T, H], data: t.data as Uint16Array };
  return { dtype: "float32", shape: [T, H], data: ortFloats(t, "inputs_embeds") };
}
