/**
 * The vision tower and the token-embedding model of a generated VLM folder, with random weights:
 * small, but shaped like the real exports (inputs, outputs, patch and merge arithmetic), so the
 * calibration builder runs them exactly as it would run a real model's.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../../../../gen/onnx_pb.js";
import { OnnxDataType } from "../../onnx/dtype.js";
import { GraphBuilder } from "../graphBuilder.js";
import { Rng } from "../rng.js";
import { ExternalDataWriter } from "../weightStore.js";

const F32 = OnnxDataType.FLOAT;

/** Qwen2-VL's vision geometry: 14-pixel patches, 2 frames per temporal patch, 2x2 merge. */
export interface QwenVisionGeometry { patchSize: number; temporalPatchSize: number; mergeSize: number; visionHidden: number }

export interface LlavaVisionGeometry { imageSize: number; patchSize: number; visionHidden: number }

export interface ModelFiles { dir: string; model: string; data: string }

function save(b: GraphBuilder, store: ExternalDataWriter, files: ModelFiles, graphName: string): void {
  store.close();
  const model = b.toModel({ graphName, irVersion: 8, opsets: [{ domain: "", version: 17 }] });
  writeFileSync(join(files.dir, files.model), toBinary(ModelProtoSchema, model));
}

function builder(files: ModelFiles): { b: GraphBuilder; store: ExternalDataWriter } {
  const store = new ExternalDataWriter(join(files.dir, files.data), files.data, F32);
  return { b: new GraphBuilder(store, F32, "torch", false), store };
}

function randomWeight(b: GraphBuilder, seed: number, name: string, dims: number[]): string {
  const rng = Rng.forKey(seed, name);
  return b.floatWeight(name, dims, (dst, _s, n) => rng.fillUniform(dst, n, 0, Math.sqrt(3 / dims[0]!)));
}

/** GELU as x * sigmoid(1.702 x) (opset 17 has no Gelu). */
function gelu(b: GraphBuilder, scope: string, x: string): string {
  return b.op("Mul", [x, b.op("Sigmoid", [b.op("Mul", [x, b.scalar(1.702)], { scope })], { scope })], { scope });
}

/**
 * Qwen2.5-VL vision: pixel_values [patches, 3 * t * p * p] (patches in Qwen's order, each 2x2
 * merge window consecutive) and image_grid_thw [images, 3] -> image_features [patches / 4, hidden].
 * The merger concatenates each window's four patch embeddings, as PatchMerger does.
 */
export function writeQwenVision(files: ModelFiles, g: QwenVisionGeometry, hidden: number, seed: number): void {
  const { b, store } = builder(files);
  const patchDim = 3 * g.temporalPatchSize * g.patchSize * g.patchSize;
  const window = g.mergeSize * g.mergeSize;
  const x = b.input("pixel_values", F32, ["num_patches", patchDim]);
  // Declared (onnxruntime-genai and transformers.js feed it); the patch rows already carry the grid.
  b.input("image_grid_thw", OnnxDataType.INT64, ["num_images", 3]);
  const scope = "/visual";
  const embedded = b.op("MatMul", [x, randomWeight(b, seed, "visual.patch_embed.proj.weight", [patchDim, g.visionHidden])], { scope: `${scope}/patch_embed` });
  const act = gelu(b, `${scope}/blocks.0`, embedded);
  const windows = b.op("Reshape", [act, b.int64([-1, window * g.visionHidden])], { scope: `${scope}/merger` });
  const h = gelu(b, `${scope}/merger`, b.op("MatMul", [windows, randomWeight(b, seed, "visual.merger.mlp.0.weight", [window * g.visionHidden, hidden])], { scope: `${scope}/merger` }));
  b.node("MatMul", [h, randomWeight(b, seed, "visual.merger.mlp.2.weight", [hidden, hidden])], { scope: `${scope}/merger`, outputs: ["image_features"] });
  b.output("image_features", F32, ["num_merged_patches", hidden]);
  save(b, store, files, "qwen2_5_vl_vision");
}

/** LLaVA vision: pixel_values [B, 3, S, S] -> image_features [B, (S/p)^2, hidden] (CLIP patches + projector). */
export function writeLlavaVision(files: ModelFiles, g: LlavaVisionGeometry, hidden: number, seed: number): void {
  const { b, store } = builder(files);
  const grid = g.imageSize / g.patchSize;
  const x = b.input("pixel_values", F32, ["batch_size", 3, g.imageSize, g.imageSize]);
  const scope = "/vision_tower/embeddings";
  const convW = randomWeight(b, seed, "vision_tower.embeddings.patch_embedding.weight", [g.visionHidden, 3, g.patchSize, g.patchSize]);
  const patches = b.op("Conv", [x, convW], { scope, attrs: { kernel_shape: { ints: [g.patchSize, g.patchSize] }, strides: { ints: [g.patchSize, g.patchSize] } } });
  const rows = b.op("Transpose", [b.op("Reshape", [patches, b.int64([0, g.visionHidden, grid * grid])], { scope })], { scope, attrs: { perm: { ints: [0, 2, 1] } } });
  const p = "/multi_modal_projector";
  const h = gelu(b, p, b.op("MatMul", [rows, randomWeight(b, seed, "multi_modal_projector.linear_1.weight", [g.visionHidden, hidden])], { scope: p }));
  b.node("MatMul", [h, randomWeight(b, seed, "multi_modal_projector.linear_2.weight", [hidden, hidden])], { scope: p, outputs: ["image_features"] });
  b.output("image_features", F32, ["batch_size", grid * grid, hidden]);
  save(b, store, files, "llava_vision");
}

function embeddingTable(b: GraphBuilder, vocab: number, hidden: number, seed: number): string {
  const rng = Rng.forKey(seed, "embed_tokens");
  return b.floatWeight("model.embed_tokens.weight", [vocab, hidden], (dst, _s, n) => { for (let i = 0; i < n; i++) dst[i] = rng.normal(); });
}

/** transformers.js embed_tokens: input_ids [B, S] -> inputs_embeds [B, S, hidden]. */
export function writeTokenEmbedding(files: ModelFiles, vocab: number, hidden: number, seed: number): void {
  const { b, store } = builder(files);
  const ids = b.input("input_ids", OnnxDataType.INT64, ["batch_size", "sequence_length"]);
  b.node("Gather", [embeddingTable(b, vocab, hidden, seed), ids], { scope: "/model/embed_tokens", outputs: ["inputs_embeds"] });
  b.output("inputs_embeds", F32, ["batch_size", "sequence_length", hidden]);
  save(b, store, files, "embed_tokens");
}

/**
 * onnxruntime-genai's embedding model: input_ids [B, S] and image_features [N, hidden] ->
 * inputs_embeds [B, S, hidden], the n-th image-token position taking feature row n.
 */
export function writeMergingEmbedding(files: ModelFiles, vocab: number, hidden: number, imageTokenId: number, seed: number): void {
  const { b, store } = builder(files);
  const scope = "/model/embed_tokens";
  const ids = b.input("input_ids", OnnxDataType.INT64, ["batch_size", "sequence_length"]);
  const features = b.input("image_features", F32, ["num_image_tokens", hidden]);
  const flat = b.op("Reshape", [ids, b.int64([-1])], { scope });
  const text = b.op("Gather", [embeddingTable(b, vocab, hidden, seed), flat], { scope });
  const isImage = b.op("Equal", [flat, b.int64([imageTokenId], true)], { scope });
  const rank = b.op("Sub", [b.op("CumSum", [b.op("Cast", [isImage], { scope, attrs: { to: { int: OnnxDataType.INT64 } } }), b.int64([0], true)], { scope }), b.int64([1], true)], { scope });
  // One zero row after the features keeps the Gather valid on text-only prompts (no features).
  const zeroRow = b.floatWeight("image_features_pad", [1, hidden], (dst, _s, n) => dst.fill(0, 0, n));
  const rows = b.op("Gather", [b.op("Concat", [features, zeroRow], { scope, attrs: { axis: { int: 0 } } }), b.op("Max", [rank, b.int64([0], true)], { scope })], { scope });
  const merged = b.op("Where", [b.op("Unsqueeze", [isImage, b.int64([1])], { scope }), rows, text], { scope });
  const shape = b.op("Concat", [b.op("Shape", [ids], { scope }), b.int64([hidden])], { scope, attrs: { axis: { int: 0 } } });
  b.node("Reshape", [merged, shape], { scope, outputs: ["inputs_embeds"] });
  b.output("inputs_embeds", F32, ["batch_size", "sequence_length", hidden]);
  save(b, store, files, "qwen2_5_vl_embedding");
}
