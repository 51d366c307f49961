/**
 * The Hugging Face side of `atvp calib`, through @huggingface/transformers (loaded lazily, so
 * prune and the cluster never pay for it, and strictly offline): the folder's tokenizer and
 * chat template, and its image processor. For onnxruntime-genai folders the
 * onnxruntime-extensions processor_config.json (Resize with smart_resize, Rescale, Normalize,
 * PatchImage) is translated into the Qwen2-VL image processor's parameters.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CalibrationError, InvalidArgumentError } from "../../errors.js";
import type { ModelFolder } from "../../modelDir/modelFolder.js";
import type { ChatMessage } from "./calibInputs.js";

export type Family = "qwen2_vl" | "llava";

export interface FamilyTokens {
  family: Family;
  /** the placeholder the chat template writes once per image and the processor expands */
  placeholder: string;
  imageTokenId: number;
}

/** Qwen2-VL and Qwen2.5-VL share the token layout and get_rope_index; LLaVA-style models expand <image>. */
export function familyOf(folder: ModelFolder): Family {
  const type = String(folder.layout === "genai" ? folder.config["model"]?.["type"] : folder.config["model_type"]);
  if (type === "qwen2_vl" || type === "qwen2_5_vl") return "qwen2_vl";
  if (type === "llava" && folder.layout === "transformers-js") return "llava";
  throw new InvalidArgumentError(folder.dir, `model family ${JSON.stringify(type)} (${folder.layout} layout): not supported yet (atvp calib knows Qwen2-VL / Qwen2.5-VL and LLaVA-style models)`);
}

export interface ImageInfo { width: number; height: number }

export interface ProcessedImage {
  /** float32 pixel values as the vision model takes them */
  pixels: Float32Array;
  dims: number[];
  /** Qwen: [t, h, w] patch grid */
  grid?: [number, number, number];
}

export interface VlmProcessors {
  tokens: FamilyTokens;
  mergeSize: number;
  minPixels: number;
  /** the chat template rendered with add_generation_prompt=false */
  render(messages: ChatMessage[]): string;
  encode(text: string): number[];
  readImage(path: string): Promise<{ info: ImageInfo; image: unknown }>;
  process(image: unknown): Promise<ProcessedImage>;
}

type Transformers = typeof import("@huggingface/transformers");

async function loadTransformers(): Promise<Transformers> {
  const t = await import("@huggingface/transformers");
  t.env.allowRemoteModels = false;
  t.env.allowLocalModels = true;
  t.env.localModelPath = "/";
  return t;
}

function readJson(path: string): Record<string, any> {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Record<string, any>;
  } catch (err) {
    throw new InvalidArgumentError(path, `cannot read (${(err as Error).message})`);
  }
}

export async function loadProcessors(folder: ModelFolder): Promise<VlmProcessors> {
  const family = familyOf(folder);
  const dir = folder.dir;
  if (!existsSync(join(dir, "tokenizer.json"))) throw new InvalidArgumentError(dir, "no tokenizer in the model folder (tokenizer.json)");
  const t = await loadTransformers();
  const tokenizer = await t.AutoTokenizer.from_pretrained(dir);
  const templateFile = join(dir, "chat_template.jinja");
  const template = (tokenizer as unknown as { chat_template?: string }).chat_template
    ?? (existsSync(templateFile) ? readFileSync(templateFile, "utf8") : undefined)
    ?? (existsSync(join(dir, "chat_template.json")) ? readJson(join(dir, "chat_template.json"))["chat_template"] as string | undefined : undefined);
  if (typeof template !== "string" || template === "") {
    throw new InvalidArgumentError(dir, "no chat template in the model folder (tokenizer_config.json \"chat_template\", chat_template.jinja or chat_template.json)");
  }
  const placeholder = family === "qwen2_vl" ? "<|image_pad|>" : "<image>";
  const ids = tokenizer.encode(placeholder, { add_special_tokens: false });
  if (ids.length !== 1) throw new InvalidArgumentError(join(dir, "tokenizer.json"), `${placeholder} is not a single special token in this tokenizer`);
  const imageTokenId = Number(ids[0]);

  let processor: (image: unknown) => Promise<Record<string, { dims: number[]; data: ArrayLike<number | bigint> }>>;
  let mergeSize = 1;
  let minPixels = 0;
  if (folder.layout === "genai") {
    const cfg = genaiImageConfig(join(dir, folder.config["model"]?.["vision"]?.["config_filename"] ?? "processor_config.json"));
    mergeSize = cfg.merge_size;
    minPixels = cfg.min_pixels;
    const p = new t.Qwen2VLImageProcessor(cfg);
    processor = (image) => p(image as never) as never;
  } else {
    const pre = join(dir, "preprocessor_config.json");
    if (!existsSync(pre)) throw new InvalidArgumentError(dir, "no preprocessor_config.json in the model folder (the image processor's settings)");
    const cfg = readJson(pre);
    if (family === "qwen2_vl") {
      mergeSize = Number(cfg["merge_size"] ?? 2);
      minPixels = Number(cfg["min_pixels"] ?? cfg["size"]?.["min_pixels"] ?? cfg["size"]?.["shortest_edge"] ?? 0);
    }
    const p = await t.AutoImageProcessor.from_pretrained(dir);
    processor = (image) => p(image as never) as never;
  }
  return {
    tokens: { family, placeholder, imageTokenId },
    mergeSize,
    minPixels,
    render: (messages) => tokenizer.apply_chat_template(messages as never, { tokenize: false, add_generation_prompt: false, chat_template: template }) as string,
    encode: (text) => tokenizer.encode(text, { add_special_tokens: false }).map(Number),
    async readImage(path) {
      const image = await t.RawImage.read(path);
      return { info: { width: image.width, height: image.height }, image };
    },
    async process(image) {
      const out = await processor(image);
      const pv = out["pixel_values"]!;
      const grid = out["image_grid_thw"];
      return {
        pixels: pv.data instanceof Float32Array ? pv.data : Float32Array.from(pv.data as ArrayLike<number>),
        dims: [...pv.dims],
        ...(grid ? { grid: Array.from(grid.data as ArrayLike<bigint>, Number) as [number, number, number] } : {}),
      };
    },
  };
}

interface QwenImageConfig {
  do_resize: boolean; do_rescale: boolean; do_normalize: boolean; do_convert_rgb: boolean;
  rescale_factor: number; image_mean: number[]; image_std: number[]; resample: number;
  min_pixels: number; max_pixels: number; size: { min_pixels: number; max_pixels: number };
  patch_size: number; temporal_patch_size: number; merge_size: number;
}

/** onnxruntime-extensions transforms -> Qwen2VLImageProcessor parameters. */
export function genaiImageConfig(path: string): QwenImageConfig {
  if (!existsSync(path)) throw new InvalidArgumentError(path, "not found: the genai vision model needs its processor_config.json");
  const transforms = (readJson(path)["processor"]?.["transforms"] ?? []) as Array<{ operation?: { type?: string; attrs?: Record<string, any> } }>;
  const op = (type: string) => transforms.find((x) => x.operation?.type === type)?.operation?.attrs;
  const resize = op("Resize");
  const rescale = op("Rescale");
  const normalize = op("Normalize");
  const patch = op("PatchImage");
  if (!resize || !patch) throw new CalibrationError(path, "expected Resize and PatchImage transforms (onnxruntime-extensions Qwen2-VL processor)");
  if (!resize["smart_resize"]) throw new CalibrationError(path, "Resize without smart_resize: not supported yet (Qwen2-VL processors resize with smart_resize)");
  const minPixels = Number(resize["min_pixels"] ?? 3136);
  const maxPixels = Number(resize["max_pixels"] ?? 12845056);
  return {
    do_resize: true,
    do_rescale: rescale !== undefined,
    do_normalize: normalize !== undefined,
    do_convert_rgb: true,
    rescale_factor: Number(rescale?.["rescale_factor"] ?? 1 / 255),
    image_mean: (normalize?.["mean"] as number[] | undefined) ?? [0, 0, 0],
    image_std: (normalize?.["std"] as number[] | undefined) ?? [1, 1, 1],
    resample: 3,
    min_pixels: minPixels,
    max_pixels: maxPixels,
    size: { min_pixels: minPixels, max_pixels: maxPixels },
    patch_size: Number(patch["patch_size"] ?? resize["patch_size"] ?? 14),
    temporal_patch_size: Number(patch["temporal_patch_size"] ?? 2),
    merge_size: Number(patch["merge_size"] ?? resize["merge_size"] ?? 2),
  };
}
