/**
 * Options of the test-model generator and their resolution to a complete, validated decoder
 * configuration; kept apart so the CLI can validate flags without building anything.
 */
import { InvalidArgumentError } from "../errors.js";

export type AttentionKind = "mha" | "gqa";
export type NormKind = "rms" | "layer";
export type NodeNaming = "torch" | "none";

export interface GenModelOptions {
  outDir: string;
  /** Decoder layers (L). */
  layers: number;
  /** Hidden size (H). */
  hidden: number;
  /** Attention heads; default H/16 (head_dim 16) when that divides, else 1. */
  heads?: number;
  /** Key/value heads; default = heads. Fewer than heads needs attention "gqa" when fused. */
  kvHeads?: number;
  /** MLP width; default 2.75*H rounded to a multiple of 16. */
  intermediate?: number;
  vocab?: number;
  /** Use onnxruntime contrib ops like the onnxruntime-genai builder instead of plain ONNX ops. */
  fused?: boolean;
  fp16?: boolean;
  /** Fused attention op: MultiHeadAttention or GroupQueryAttention. */
  attention?: AttentionKind;
  /** RMSNorm (LLaMA) or LayerNorm with bias. */
  norm?: NormKind;
  /** "none" leaves every node name empty. */
  nodeNames?: NodeNaming;
  /** Calibration samples. */
  samples?: number;
  /** Tokens per calibration sample. */
  seqLen?: number;
  /** Contiguous image tokens per calibration sample. */
  imageTokens?: number;
  seed?: number;
  /** Overwrite a non-empty output directory. */
  force?: boolean;
  /**
   * Multimodal RoPE (Qwen2-VL): position_ids [3, batch, seq] and the rotary frequencies split into
   * temporal/height/width sections (summing to head_dim / 2). Unfused decoders only.
   */
  mropeSection?: number[];
  /**
   * The switches of a transformers.js merged decoder: use_cache_branch (bool [1]) and
   * num_logits_to_keep (int64 scalar, 0 = every position). Unfused decoders only.
   */
  mergedInputs?: boolean;
}

export interface DecoderConfig {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  intermediate: number;
  vocab: number;
  fused: boolean;
  fp16: boolean;
  attention: AttentionKind;
  norm: NormKind;
  nodeNames: NodeNaming;
  seed: number;
  /** Rows of the rotary cos/sin tables (the positions the model accepts). */
  maxPositions: number;
  ropeTheta: number;
  normEpsilon: number;
  /** absent: 1-D positions */
  mropeSection?: number[];
  mergedInputs?: boolean;
}

export interface CalibConfig {
  samples: number;
  seqLen: number;
  imageTokens: number;
  /** Trailing padding tokens of the last sample (0 when there is a single sample). */
  padTokens: number;
}

export interface ResolvedOptions {
  outDir: string;
  force: boolean;
  decoder: DecoderConfig;
  calib: CalibConfig;
}

const PAD_TOKENS = 2;

export function resolveOptions(o: GenModelOptions): ResolvedOptions {
  if (typeof o.outDir !== "string" || o.outDir.length === 0) throw new InvalidArgumentError("outDir", "an output directory is required");
  const layers = positiveInt("layers", o.layers);
  const hidden = positiveInt("hidden", o.hidden);
  const heads = o.heads === undefined ? defaultHeads(hidden) : positiveInt("heads", o.heads);
  if (hidden % heads !== 0) throw new InvalidArgumentError("heads", `${heads} heads do not divide hidden size ${hidden}`);
  const headDim = hidden / heads;
  if (headDim % 2 !== 0) throw new InvalidArgumentError("heads", `head size ${headDim} (hidden ${hidden} / ${heads} heads) must be even for rotary embeddings`);
  const kvHeads = o.kvHeads === undefined ? heads : positiveInt("kvHeads", o.kvHeads);
  if (heads % kvHeads !== 0) throw new InvalidArgumentError("kvHeads", `${kvHeads} key/value heads do not divide ${heads} heads`);
  const intermediate = o.intermediate === undefined ? Math.max(16, Math.round((hidden * 2.75) / 16) * 16) : positiveInt("intermediate", o.intermediate);
  const vocab = o.vocab === undefined ? 256 : positiveInt("vocab", o.vocab);
  const fused = o.fused ?? false;
  const attention = oneOf("attention", o.attention ?? "mha", ["mha", "gqa"] as const);
  const norm = oneOf("norm", o.norm ?? "rms", ["rms", "layer"] as const);
  const nodeNames = oneOf("nodeNames", o.nodeNames ?? "torch", ["torch", "none"] as const);
  if (fused && attention === "mha" && kvHeads !== heads) {
    throw new InvalidArgumentError("kvHeads", `MultiHeadAttention needs kvHeads = heads (${heads}); use attention "gqa" for ${kvHeads} key/value heads`);
  }
  const mropeSection = o.mropeSection;
  if (mropeSection !== undefined) {
    if (fused) throw new InvalidArgumentError("mropeSection", "multimodal RoPE is generated for unfused decoders only");
    if (mropeSection.length !== 3 || mropeSection.some((v) => !Number.isInteger(v) || v < 1) || mropeSection.reduce((a, b) => a + b, 0) !== headDim / 2) {
      throw new InvalidArgumentError("mropeSection", `must be three positive integers summing to head_dim / 2 = ${headDim / 2}, got ${JSON.stringify(mropeSection)}`);
    }
  }
  if (o.mergedInputs && fused) throw new InvalidArgumentError("mergedInputs", "merged-decoder inputs are generated for unfused decoders only");
  const seed = o.seed === undefined ? 21 : int("seed", o.seed);
  const samples = o.samples === undefined ? 8 : positiveInt("samples", o.samples);
  const seqLen = o.seqLen === undefined ? 48 : positiveInt("seqLen", o.seqLen);
  const imageTokens = o.imageTokens === undefined ? Math.min(24, Math.max(0, seqLen - 3 - PAD_TOKENS)) : nonNegativeInt("imageTokens", o.imageTokens);
  const padTokens = samples > 1 ? PAD_TOKENS : 0;
  // At least one text token before the image run and one after it, padding aside.
  if (imageTokens > 0 && imageTokens + 2 + padTokens > seqLen) {
    throw new InvalidArgumentError("imageTokens", `${imageTokens} image tokens do not fit in ${seqLen} tokens with text on both sides${padTokens ? ` and ${padTokens} padding tokens` : ""}`);
  }
  if (seqLen <= padTokens) throw new InvalidArgumentError("seqLen", `${seqLen} tokens leave no room beside ${padTokens} padding tokens`);
  return {
    outDir: o.outDir,
    force: o.force ?? false,
    decoder: {
      layers, hidden, heads, kvHeads, headDim, intermediate, vocab, fused, fp16: o.fp16 ?? false,
      attention, norm, nodeNames, seed,
      maxPositions: Math.max(2048, seqLen),
      ropeTheta: 10000,
      normEpsilon: norm === "rms" ? 1e-6 : 1e-5,
      ...(mropeSection ? { mropeSection: [...mropeSection] } : {}),
      ...(o.mergedInputs ? { mergedInputs: true } : {}),
    },
    calib: { samples, seqLen, imageTokens, padTokens },
  };
}

function defaultHeads(hidden: number): number {
  return hidden % 16 === 0 ? hidden / 16 : 1;
}

function int(name: string, v: number): number {
  if (typeof v !== "number" || !Number.isInteger(v)) throw new InvalidArgumentError(name, `must be an integer, got ${String(v)}`);
  return v;
}

function positiveInt(name: string, v: number): number {
  if (int(name, v) < 1) throw new InvalidArgumentError(name, `must be at least 1, got ${v}`);
  return v;
}

function nonNegativeInt(name: string, v: number): number {
  if (int(name, v) < 0) throw new InvalidArgumentError(name, `must not be negative, got ${v}`);
  return v;
}

function oneOf<T extends string>(name: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v)) throw new InvalidArgumentError(name, `must be one of ${allowed.join(", ")}, got ${JSON.stringify(v)}`);
  return v as T;
}
