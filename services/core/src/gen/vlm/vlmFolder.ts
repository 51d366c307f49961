/**
 * `atvp gen-model --layout ...`: a complete small vision-language model folder with random
 * weights, in one of the layouts users download: onnxruntime-genai (genai_config.json,
 * processor_config.json) or transformers.js / onnx-community (config.json,
 * preprocessor_config.json, onnx/*.onnx), for Qwen2.5-VL or LLaVA, plus a few PNG images and a
 * prompts file to build a calibration set from.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError } from "../../errors.js";
import { resolveOptions } from "../config.js";
import { prepareOutDir } from "../genModel.js";
import { writeDecoder } from "../llavaDecoder.js";
import { Rng } from "../rng.js";
import { encodePng } from "./png.js";
import { LLAVA_TOKENS, QWEN_TOKENS, tokenizerConfigJson, tokenizerJson, type TokenizerSpec } from "./tokenizerFiles.js";
import { writeLlavaVision, writeMergingEmbedding, writeQwenVision, writeTokenEmbedding } from "./visionModels.js";

export const VLM_LAYOUTS = ["genai-qwen2_5_vl", "transformers-js-qwen2_5_vl", "transformers-js-llava"] as const;
export type VlmLayout = (typeof VLM_LAYOUTS)[number];

export interface VlmFolderOptions {
  layout: string;
  outDir: string;
  layers?: number;
  hidden?: number;
  seed?: number;
  force?: boolean;
}

export interface VlmFolderResult {
  layout: VlmLayout;
  dir: string;
  /** decoder, vision and embedding models, relative to dir */
  decoder: string;
  vision: string;
  embedding: string;
  images: string[];
  prompts: string;
  /** LLaVA only: the same samples as a LLaVA/ShareGPT4V conversations file */
  conversations?: string;
  mropeSection?: number[];
}

const CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073];
const CLIP_STD = [0.26862954, 0.26130258, 0.27577711];
const QWEN_GEOMETRY = { patchSize: 14, temporalPatchSize: 2, mergeSize: 2, visionHidden: 32 };
const LLAVA_GEOMETRY = { imageSize: 56, patchSize: 14, visionHidden: 32 };
/** Qwen2.5-VL's defaults: 56 x 56 to 28 * 28 * 1280 pixels. */
const QWEN_MIN_PIXELS = 3136;
const QWEN_MAX_PIXELS = 12845056;

const PROMPTS = [
  { prompt: "What is in this picture?", response: "A bright square on a dark field." },
  { prompt: "Describe the colours.", response: "Mostly green with a warm stripe." },
  { prompt: "How many shapes are there?", response: "Two shapes." },
];
const TEXT_ONLY = { prompt: "Write one sentence about the sea.", response: "The sea is wide and calm." };

export function generateVlmFolder(o: VlmFolderOptions): VlmFolderResult {
  if (!(VLM_LAYOUTS as readonly string[]).includes(o.layout)) {
    throw new InvalidArgumentError("--layout", `must be one of ${VLM_LAYOUTS.join(", ")}, got ${JSON.stringify(o.layout)}`);
  }
  const layout = o.layout as VlmLayout;
  const qwen = layout.endsWith("qwen2_5_vl");
  const genai = layout.startsWith("genai");
  const tokens = qwen ? QWEN_TOKENS : LLAVA_TOKENS;
  const seed = o.seed ?? 21;
  const hidden = o.hidden ?? 64;
  const probe = resolveOptions({ outDir: o.outDir, layers: o.layers ?? 2, hidden, vocab: tokens.vocabSize });
  const half = probe.decoder.headDim / 2;
  const t = Math.round(half / 4);
  const h = Math.floor((half - t) / 2);
  const mropeSection = qwen ? [t, h, half - t - h] : undefined;
  const { decoder } = resolveOptions({
    outDir: o.outDir, layers: o.layers ?? 2, hidden, vocab: tokens.vocabSize, seed,
    ...(mropeSection ? { mropeSection } : {}), mergedInputs: !genai,
  });
  prepareOutDir(o.outDir, o.force ?? false);
  const dir = o.outDir;
  const modelDir = genai ? dir : join(dir, "onnx");
  mkdirSync(modelDir, { recursive: true });
  const rel = (f: string) => (genai ? f : `onnx/${f}`);
  const names = genai
    ? { decoder: "model.onnx", vision: "vision.onnx", embedding: "embedding.onnx", data: (m: string) => `${m}.data` }
    : { decoder: "decoder_model_merged.onnx", vision: "vision_encoder.onnx", embedding: "embed_tokens.onnx", data: (m: string) => `${m}_data` };

  writeDecoder(decoder, modelDir, { model: names.decoder, data: names.data(names.decoder) });
  const files = (m: string) => ({ dir: modelDir, model: m, data: names.data(m) });
  if (qwen) writeQwenVision(files(names.vision), QWEN_GEOMETRY, hidden, seed);
  else writeLlavaVision(files(names.vision), LLAVA_GEOMETRY, hidden, seed);
  if (genai) writeMergingEmbedding(files(names.embedding), tokens.vocabSize, hidden, tokens.imageTokenId, seed);
  else writeTokenEmbedding(files(names.embedding), tokens.vocabSize, hidden, seed);

  writeJson(join(dir, "tokenizer.json"), tokenizerJson(tokens));
  writeJson(join(dir, "tokenizer_config.json"), tokenizerConfigJson(tokens));
  if (genai) {
    writeJson(join(dir, "genai_config.json"), genaiConfig(decoder, tokens, names));
    writeJson(join(dir, "processor_config.json"), genaiProcessorConfig());
  } else {
    writeJson(join(dir, "config.json"), qwen ? qwenConfig(decoder, tokens, mropeSection!) : llavaConfig(decoder, tokens));
    writeJson(join(dir, "preprocessor_config.json"), qwen ? qwenPreprocessor() : llavaPreprocessor());
  }

  const images = writeImages(dir, qwen ? [[56, 56], [84, 56], [112, 84]] : [[64, 48], [56, 56], [80, 60]], seed);
  const prompts = "prompts.jsonl";
  const lines = [...images.map((image, i) => ({ image, ...PROMPTS[i % PROMPTS.length]! })), TEXT_ONLY];
  writeFileSync(join(dir, prompts), lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
  let conversations: string | undefined;
  if (!qwen) {
    conversations = "conversations.json";
    const convs = images.map((image, i) => ({
      id: `sample-${i}`,
      image,
      conversations: [
        { from: "human", value: `<image>\n${PROMPTS[i % PROMPTS.length]!.prompt}` },
        { from: "gpt", value: PROMPTS[i % PROMPTS.length]!.response },
      ],
    }));
    writeJson(join(dir, conversations), convs);
  }
  return {
    layout, dir, decoder: rel(names.decoder), vision: rel(names.vision), embedding: rel(names.embedding),
    images, prompts, ...(conversations ? { conversations } : {}), ...(mropeSection ? { mropeSection } : {}),
  };
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n");
}

/** Smooth colour fields with a bright rectangle and seeded noise, different per image. */
function writeImages(dir: string, sizes: number[][], seed: number): string[] {
  mkdirSync(join(dir, "images"), { recursive: true });
  return sizes.map(([w, h], i) => {
    const rng = Rng.forKey(seed, `image.${i}`);
    const rgb = new Uint8Array(w! * h! * 3);
    const [x0, y0] = [rng.int(0, Math.floor(w! / 2)), rng.int(0, Math.floor(h! / 2))];
    for (let y = 0; y < h!; y++) for (let x = 0; x < w!; x++) {
      const inside = x >= x0 && x < x0 + w! / 3 && y >= y0 && y < y0 + h! / 3;
      const base = [(x * 255) / w!, (y * 255) / h!, ((x + y + 40 * i) * 255) / (w! + h!)];
      for (let c = 0; c < 3; c++) {
        const v = inside ? 230 - 60 * c + 10 * i : base[c]! * (0.5 + 0.25 * ((i + c) % 3));
        rgb[(y * w! + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v + 12 * rng.normal())));
      }
    }
    const file = `images/image${i}.png`;
    writeFileSync(join(dir, file), encodePng(w!, h!, rgb));
    return file;
  });
}

interface DecoderShape { layers: number; hidden: number; heads: number; kvHeads: number; headDim: number; intermediate: number; vocab: number; ropeTheta: number; normEpsilon: number; maxPositions: number }

function genaiConfig(d: DecoderShape, t: TokenizerSpec, names: { decoder: string; vision: string; embedding: string }): object {
  return {
    model: {
      bos_token_id: t.padTokenId,
      context_length: d.maxPositions,
      decoder: {
        session_options: { log_id: "onnxruntime-genai", provider_options: [] },
        filename: names.decoder,
        head_size: d.headDim,
        hidden_size: d.hidden,
        inputs: { inputs_embeds: "inputs_embeds", attention_mask: "attention_mask", position_ids: "position_ids" },
        outputs: { logits: "logits" },
        num_attention_heads: d.heads,
        num_hidden_layers: d.layers,
        num_key_value_heads: d.kvHeads,
      },
      embedding: {
        filename: names.embedding,
        inputs: { input_ids: "input_ids", image_features: "image_features" },
        outputs: { inputs_embeds: "inputs_embeds" },
      },
      vision: {
        filename: names.vision,
        config_filename: "processor_config.json",
        spatial_merge_size: QWEN_GEOMETRY.mergeSize,
        tokens_per_second: 2,
        inputs: { pixel_values: "pixel_values", image_grid_thw: "image_grid_thw" },
        outputs: { image_features: "image_features" },
      },
      eos_token_id: [t.eosTokenId, t.padTokenId],
      pad_token_id: t.padTokenId,
      type: "qwen2_5_vl",
      vocab_size: d.vocab,
      image_token_id: t.imageTokenId,
      video_token_id: t.videoTokenId,
      vision_start_token_id: t.visionStartId,
    },
    search: { diversity_penalty: 0, do_sample: false, early_stopping: true, length_penalty: 1, max_length: d.maxPositions, min_length: 0, no_repeat_ngram_size: 0, num_beams: 1, num_return_sequences: 1, past_present_share_buffer: false, repetition_penalty: 1, temperature: 1, top_k: 1, top_p: 1 },
  };
}

/** onnxruntime-extensions' processor format, as onnxruntime-genai ships it for Qwen2.5-VL. */
function genaiProcessorConfig(): object {
  const g = QWEN_GEOMETRY;
  return {
    processor: {
      name: "qwen2_5_image_processor",
      transforms: [
        { operation: { name: "decode_image", type: "DecodeImage", attrs: { color_space: "RGB" } } },
        { operation: { name: "convert_to_rgb", type: "ConvertRGB" } },
        { operation: { name: "resize", type: "Resize", attrs: { width: 540, height: 360, smart_resize: 1, min_pixels: QWEN_MIN_PIXELS, max_pixels: QWEN_MAX_PIXELS, patch_size: g.patchSize, merge_size: g.mergeSize } } },
        { operation: { name: "rescale", type: "Rescale", attrs: { rescale_factor: 1 / 255 } } },
        { operation: { name: "normalize", type: "Normalize", attrs: { mean: CLIP_MEAN, std: CLIP_STD, qwen2_5_vl: 1 } } },
        { operation: { name: "patch_image", type: "PatchImage", attrs: { patch_size: g.patchSize, temporal_patch_size: g.temporalPatchSize, merge_size: g.mergeSize } } },
      ],
    },
  };
}

function textConfig(d: DecoderShape): Record<string, unknown> {
  return {
    hidden_size: d.hidden, intermediate_size: d.intermediate, num_attention_heads: d.heads, num_hidden_layers: d.layers,
    num_key_value_heads: d.kvHeads, vocab_size: d.vocab, rms_norm_eps: d.normEpsilon, rope_theta: d.ropeTheta,
    max_position_embeddings: d.maxPositions, hidden_act: "silu",
  };
}

function qwenConfig(d: DecoderShape, t: TokenizerSpec, mropeSection: number[]): object {
  const g = QWEN_GEOMETRY;
  return {
    architectures: ["Qwen2_5_VLForConditionalGeneration"],
    model_type: "qwen2_5_vl",
    ...textConfig(d),
    rope_scaling: { type: "mrope", mrope_section: mropeSection },
    bos_token_id: t.padTokenId, eos_token_id: t.eosTokenId, pad_token_id: t.padTokenId,
    image_token_id: t.imageTokenId, video_token_id: t.videoTokenId,
    vision_start_token_id: t.visionStartId, vision_end_token_id: t.visionEndId, vision_token_id: t.visionStartId! + 2,
    vision_config: {
      model_type: "qwen2_5_vl", hidden_size: g.visionHidden, out_hidden_size: d.hidden, in_chans: 3,
      patch_size: g.patchSize, spatial_merge_size: g.mergeSize, temporal_patch_size: g.temporalPatchSize, tokens_per_second: 2,
    },
    "transformers.js_config": { dtype: "fp32" },
  };
}

function llavaConfig(d: DecoderShape, t: TokenizerSpec): object {
  const g = LLAVA_GEOMETRY;
  return {
    architectures: ["LlavaForConditionalGeneration"],
    model_type: "llava",
    image_token_index: t.imageTokenId,
    projector_hidden_act: "gelu",
    // The generated tower has no CLS row: every row it returns is an image token.
    vision_feature_select_strategy: "full",
    vision_feature_layer: -1,
    pad_token_id: t.padTokenId,
    text_config: { model_type: "llama", ...textConfig(d), bos_token_id: t.bosTokenId, eos_token_id: t.eosTokenId, pad_token_id: t.padTokenId },
    vision_config: { model_type: "clip_vision_model", hidden_size: g.visionHidden, image_size: g.imageSize, patch_size: g.patchSize, num_channels: 3 },
    "transformers.js_config": { dtype: "fp32" },
  };
}

function qwenPreprocessor(): object {
  const g = QWEN_GEOMETRY;
  return {
    do_convert_rgb: true, do_normalize: true, do_rescale: true, do_resize: true,
    image_mean: CLIP_MEAN, image_std: CLIP_STD, image_processor_type: "Qwen2VLImageProcessor",
    min_pixels: QWEN_MIN_PIXELS, max_pixels: QWEN_MAX_PIXELS, size: { min_pixels: QWEN_MIN_PIXELS, max_pixels: QWEN_MAX_PIXELS },
    patch_size: g.patchSize, temporal_patch_size: g.temporalPatchSize, merge_size: g.mergeSize,
    processor_class: "Qwen2_5_VLProcessor", resample: 3, rescale_factor: 1 / 255,
  };
}

function llavaPreprocessor(): object {
  const s = LLAVA_GEOMETRY.imageSize;
  return {
    crop_size: { height: s, width: s }, do_center_crop: true, do_convert_rgb: true, do_normalize: true, do_rescale: true, do_resize: true,
    image_mean: CLIP_MEAN, image_std: CLIP_STD, image_processor_type: "CLIPImageProcessor", processor_class: "LlavaProcessor",
    resample: 3, rescale_factor: 1 / 255, size: { shortest_edge: s },
  };
}
