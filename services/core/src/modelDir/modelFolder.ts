/**
 * Model folders as users download them: onnxruntime-genai (genai_config.json names the vision,
 * embedding and decoder models) or transformers.js / onnx-community (config.json and
 * onnx/<part><dtype suffix>.onnx). Finds the parts; refuses decoders whose weights are
 * quantized (MatMulNBits), which cannot be pruned.
 */
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError, UnsupportedTypeError } from "../errors.js";
import { readModel } from "../onnx/modelFile.js";

export type FolderLayout = "genai" | "transformers-js";

export interface ModelFolder {
  dir: string;
  layout: FolderLayout;
  /** paths relative to dir */
  decoder: string;
  vision?: string;
  embedding?: string;
  /** the genai_config.json or config.json contents */
  config: Record<string, any>;
  /** genai: the decoder/embedding/vision input and output names from the config */
  names?: { decoder: Record<string, string>; embedding: Record<string, string>; vision: Record<string, string> };
}

/** transformers.js dtype names and the file suffixes they select. */
export const DTYPE_SUFFIX: Record<string, string> = {
  fp32: "", fp16: "_fp16", q8: "_quantized", int8: "_int8", uint8: "_uint8", q4: "_q4", q4f16: "_q4f16", bnb4: "_bnb4",
};
const QUANTIZED_SUFFIXES = new Set(["_quantized", "_int8", "_uint8", "_q4", "_q4f16", "_bnb4"]);

export function isModelFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

export function detectLayout(dir: string): FolderLayout {
  if (existsSync(join(dir, "genai_config.json"))) return "genai";
  if (existsSync(join(dir, "config.json")) && existsSync(join(dir, "onnx"))) return "transformers-js";
  throw new InvalidArgumentError(dir, "unknown model folder layout: expected genai_config.json (onnxruntime-genai) or config.json with an onnx/ folder (transformers.js); pass --layout genai|transformers-js to force one");
}

function readJson(path: string): Record<string, any> {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Record<string, any>;
  } catch (err) {
    throw new InvalidArgumentError(path, `cannot read the model folder's configuration (${(err as Error).message})`);
  }
}

export function openModelFolder(dir: string, options: { layout?: string; dtype?: string } = {}): ModelFolder {
  if (!isModelFolder(dir)) throw new InvalidArgumentError(dir, "is not a model folder");
  const layout = options.layout === undefined ? detectLayout(dir) : checkLayout(options.layout);
  if (layout === "genai") {
    const configPath = join(dir, "genai_config.json");
    if (!existsSync(configPath)) throw new InvalidArgumentError(configPath, "not found: --layout genai needs genai_config.json");
    const config = readJson(configPath);
    const model = config["model"] ?? {};
    const part = (name: string): { filename?: string; inputs?: Record<string, string>; outputs?: Record<string, string> } => model[name] ?? {};
    const decoder = part("decoder").filename;
    if (typeof decoder !== "string") throw new InvalidArgumentError(configPath, "model.decoder.filename is missing");
    const names = (p: string) => ({ ...(part(p).inputs ?? {}), ...(part(p).outputs ?? {}) });
    return {
      dir, layout, decoder, config,
      ...(part("vision").filename ? { vision: part("vision").filename } : {}),
      ...(part("embedding").filename ? { embedding: part("embedding").filename } : {}),
      names: { decoder: names("decoder"), embedding: names("embedding"), vision: names("vision") },
    };
  }
  const configPath = join(dir, "config.json");
  if (!existsSync(configPath)) throw new InvalidArgumentError(configPath, "not found: --layout transformers-js needs config.json");
  const config = readJson(configPath);
  const suffix = dtypeSuffix(dir, options.dtype);
  const find = (part: string): string | undefined => {
    const f = `onnx/${part}${suffix}.onnx`;
    return existsSync(join(dir, f)) ? f : undefined;
  };
  const decoder = find("decoder_model_merged") ?? find("decoder_model");
  if (!decoder) throw new InvalidArgumentError(join(dir, "onnx"), `no decoder_model_merged${suffix}.onnx${options.dtype ? ` for --dtype ${options.dtype}` : ""}; have ${onnxFiles(dir).join(", ") || "no .onnx files"}`);
  const vision = find("vision_encoder");
  const embedding = find("embed_tokens");
  return { dir, layout, decoder, config, ...(vision ? { vision } : {}), ...(embedding ? { embedding } : {}) };
}

function checkLayout(layout: string): FolderLayout {
  if (layout !== "genai" && layout !== "transformers-js") throw new InvalidArgumentError("--layout", `must be genai or transformers-js, got ${JSON.stringify(layout)}`);
  return layout;
}

function onnxFiles(dir: string): string[] {
  try {
    return readdirSync(join(dir, "onnx")).filter((f) => f.endsWith(".onnx"));
  } catch {
    return [];
  }
}

function dtypeSuffix(dir: string, dtype: string | undefined): string {
  if (dtype === undefined) {
    if (existsSync(join(dir, "onnx/decoder_model_merged.onnx")) || existsSync(join(dir, "onnx/decoder_model.onnx"))) return "";
    throw new InvalidArgumentError(join(dir, "onnx"), `no full-precision decoder_model_merged.onnx; pick one of the exported variants with --dtype (${onnxFiles(dir).join(", ")})`);
  }
  const suffix = DTYPE_SUFFIX[dtype];
  if (suffix === undefined) throw new InvalidArgumentError("--dtype", `must be one of ${Object.keys(DTYPE_SUFFIX).join(", ")}, got ${JSON.stringify(dtype)}`);
  if (QUANTIZED_SUFFIXES.has(suffix)) throw new UnsupportedTypeError(`--dtype ${dtype}`, "quantized decoders cannot be pruned (their MatMulNBits / integer weights have no float values to mask); use --dtype fp32 or fp16");
  return suffix;
}

/** Refuses a decoder with quantized linear layers (MatMulNBits and friends). */
/** A model argument: an .onnx file, or a model folder (its decoder, as openModelFolder finds it). */
export function decoderPath(model: string, options: { layout?: string; dtype?: string } = {}): string {
  return isModelFolder(model) ? join(model, openModelFolder(model, options).decoder) : model;
}

export function refuseQuantized(decoderPath: string): void {
  const { model } = readModel(decoderPath);
  const ops = new Set((model.graph?.node ?? []).map((n) => n.opType));
  const quantized = ["MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "GatherBlockQuantized"].filter((op) => ops.has(op));
  if (quantized.length > 0) {
    throw new UnsupportedTypeError(decoderPath, `the decoder is quantized (${quantized.join(", ")}): MatMulNBits weights cannot be pruned; export or download the fp32/fp16 decoder`);
  }
}
