/**
 * The shape of a decoder as far as planning needs it (blocks, their linears, the dtype and the
 * hidden width that crosses a stage boundary), from an ONNX model's graph or from a Hugging Face
 * config.json alone: `atvp plan` sizes 72B- and 400B-class models without their weights.
 */
import { readFileSync } from "node:fs";
import { InvalidArgumentError } from "../errors.js";
import { TensorProto_DataType as DT } from "../../../gen/onnx_pb.js";
import type { LinearInfo } from "../graph/linears.js";
import { elementSize } from "../onnx/dtype.js";
import { analyzeModel } from "../pipeline/modelAnalysis.js";

export interface ModelShape {
  /** the model file or config.json it was read from */
  source: string;
  /** hidden width: what one token's state is between blocks */
  hidden: number;
  /** ONNX element type of the weights and the hidden state */
  dataType: number;
  /** each block's prunable linears */
  blockLinears: LinearInfo[][];
}

/** Weight bytes of one block's linears. */
export function blockWeightBytes(linears: readonly LinearInfo[]): number {
  return linears.reduce((a, l) => a + l.inDim * l.outDim * elementSize(l.dataType, l.weight), 0);
}

export function blockParams(linears: readonly LinearInfo[]): number {
  return linears.reduce((a, l) => a + l.inDim * l.outDim, 0);
}

/** From an ONNX decoder: reads the graph and tensor metadata, never a weight. */
export function shapeFromModel(path: string): ModelShape {
  const a = analyzeModel(path);
  const first = a.partition.blockLinears.flat()[0];
  if (first === undefined) throw new InvalidArgumentError(path, "has no prunable linears inside blocks");
  // A MatMul [in, out] weight's in-dimension at the first linear is the hidden width.
  return { source: a.loaded.path, hidden: first.inDim, dataType: first.dataType, blockLinears: a.partition.blockLinears };
}

const TORCH_DTYPES: Record<string, number> = {
  float32: DT.FLOAT, float: DT.FLOAT, float16: DT.FLOAT16, half: DT.FLOAT16, bfloat16: DT.BFLOAT16,
};

/**
 * From a Hugging Face config.json: the text decoder's fields (`text_config` for LLaVA-style
 * LVLMs, the top level for Qwen2-VL/Qwen2.5-VL and plain LLMs). Llama-style blocks: q, k, v, o
 * and gate, up, down. The vision tower is not pruned, so it is not planned.
 */
export function shapeFromHfConfig(config: unknown, source: string): ModelShape {
  if (typeof config !== "object" || config === null) throw new InvalidArgumentError(source, "is not a JSON object");
  const top = config as Record<string, unknown>;
  // onnxruntime-genai's genai_config.json has no MLP width: the folder's model.onnx has it all.
  const genai = top["model"] as Record<string, unknown> | undefined;
  if (typeof genai === "object" && genai !== null && typeof genai["decoder"] === "object" && !("hidden_size" in top)) {
    const file = (genai["decoder"] as Record<string, unknown>)["filename"];
    throw new InvalidArgumentError(source, `is an onnxruntime-genai config (no intermediate_size to size the MLP); plan the folder's decoder with --model ${typeof file === "string" ? file : "model.onnx"} beside it, or give the Hugging Face config.json`);
  }
  const text = typeof top["text_config"] === "object" && top["text_config"] !== null && "hidden_size" in (top["text_config"] as object)
    ? top["text_config"] as Record<string, unknown>
    : top;
  const field = (name: string, fallback?: number): number => {
    const v = text[name] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new InvalidArgumentError(source, `${name} must be a positive integer (got ${JSON.stringify(v)}); give the text decoder's config (text_config for LVLMs)`);
    }
    return v;
  };
  const hidden = field("hidden_size");
  const intermediate = field("intermediate_size");
  const layers = field("num_hidden_layers");
  const heads = field("num_attention_heads");
  const kvHeads = field("num_key_value_heads", heads);
  const headDim = field("head_dim", Math.floor(hidden / heads));
  const dtypeName = String(text["torch_dtype"] ?? top["torch_dtype"] ?? text["dtype"] ?? top["dtype"] ?? "float32");
  const dataType = TORCH_DTYPES[dtypeName];
  if (dataType === undefined) throw new InvalidArgumentError(source, `torch_dtype ${JSON.stringify(dtypeName)} is not supported (float32, float16, bfloat16)`);
  const blockLinears: LinearInfo[][] = [];
  for (let b = 0; b < layers; b++) {
    const p = `model.layers.${b}`;
    const linear = (name: string, activation: string, inDim: number, outDim: number): LinearInfo => ({
      nodeIndex: -1, node: `/${p}/${name}/MatMul`, op: "MatMul", weight: `${p}.${name}.weight`, activation: `${p}.${activation}`,
      dataType, layout: "in_out", inDim, outDim,
    });
    blockLinears.push([
      linear("self_attn.q_proj", "input_layernorm", hidden, heads * headDim),
      linear("self_attn.k_proj", "input_layernorm", hidden, kvHeads * headDim),
      linear("self_attn.v_proj", "input_layernorm", hidden, kvHeads * headDim),
      linear("self_attn.o_proj", "self_attn.attn", heads * headDim, hidden),
      linear("mlp.gate_proj", "post_attention_layernorm", hidden, intermediate),
      linear("mlp.up_proj", "post_attention_layernorm", hidden, intermediate),
      linear("mlp.down_proj", "mlp.act", intermediate, hidden),
    ]);
  }
  return { source, hidden, dataType, blockLinears };
}

export function readHfConfig(path: string): ModelShape {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new InvalidArgumentError(path, `cannot read a Hugging Face config.json: ${(err as Error).message}`);
  }
  return shapeFromHfConfig(json, path);
}
