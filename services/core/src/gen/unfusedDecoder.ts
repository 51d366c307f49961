/**
 * The decoder as torch.onnx exports a HF LLaMA language model: plain ONNX ops only (RMSNorm
 * spelled out, rotate_half rotary, softmax attention with repeat_kv for grouped heads), node
 * names from the module path, linear weights under opaque `onnx::MatMul_<n>` names. With
 * `mropeSection`, Qwen2-VL's multimodal RoPE: position_ids [3, batch, seq] and each rotary
 * frequency band driven by the temporal, height or width position (apply_multimodal_rotary_pos_emb).
 */
import { OnnxDataType } from "../onnx/dtype.js";
import type { DecoderConfig } from "./config.js";
import { additiveMask } from "./decoderCommon.js";
import { DecoderWeights, type LinearRole, type NormRole } from "./decoderWeights.js";
import type { GraphBuilder } from "./graphBuilder.js";

/** torch numbers its anonymous initializers from wherever the trace left off; any base will do. */
const FIRST_ONNX_ID = 3000;

export function buildUnfusedDecoder(b: GraphBuilder, cfg: DecoderConfig): DecoderWeights {
  const w = new DecoderWeights(b, cfg);
  const ft = b.floatType;
  const { hidden, heads, kvHeads, headDim } = cfg;
  let onnxId = FIRST_ONNX_ID;
  const linear = (scope: string, layer: number | undefined, role: LinearRole | "lm_head", x: string): string => {
    const weight = w.linear(`onnx::MatMul_${onnxId++}`, layer, role);
    return b.op("MatMul", [x, weight], { scope });
  };

  const inputsEmbeds = b.input("inputs_embeds", ft, ["batch_size", "sequence_length", hidden]);
  const attentionMask = b.input("attention_mask", OnnxDataType.INT64, ["batch_size", "sequence_length"]);
  const positionIds = cfg.mropeSection
    ? b.input("position_ids", OnnxDataType.INT64, [3, "batch_size", "sequence_length"])
    : b.input("position_ids", OnnxDataType.INT64, ["batch_size", "sequence_length"]);

  // Computed once and shared by every layer, as in transformers >= 4.38 exports.
  const mask = additiveMask(b, "/model/attn_mask", inputsEmbeds, attentionMask);
  const ropeScope = "/model/rotary_emb";
  const axis1 = b.int64([1]);
  const rope = (table: string): string => {
    const gathered = b.op("Gather", [table, positionIds], { scope: ropeScope });
    if (!cfg.mropeSection) return b.op("Unsqueeze", [gathered, axis1], { scope: ropeScope });
    // [3, B, S, D]: the chunks of mrope_section * 2 take their rows from axis i % 3 in turn.
    const sections = [...cfg.mropeSection, ...cfg.mropeSection];
    const parts: string[] = [];
    let start = 0;
    sections.forEach((width, i) => {
      const axis = i % 3;
      parts.push(b.op("Slice", [gathered, b.int64([axis, start]), b.int64([axis + 1, start + width]), b.int64([0, 3])], { scope: ropeScope }));
      start += width;
    });
    const merged = b.op("Concat", parts, { scope: ropeScope, attrs: { axis: { int: -1 } } });
    // [1, B, S, D] -> [B, 1, S, D]
    return b.op("Transpose", [merged], { scope: ropeScope, attrs: { perm: { ints: [1, 0, 2, 3] } } });
  };
  const cos = rope(w.rotaryTable("model.rotary_emb.cos_cached", "cos", true));
  const sin = rope(w.rotaryTable("model.rotary_emb.sin_cached", "sin", true));

  const norm = (scope: string, layer: number | undefined, role: NormRole | "norm", x: string): string => {
    const prefix = layer === undefined ? "model.norm" : `model.layers.${layer}.${role}`;
    const gamma = w.normWeight(`${prefix}.weight`, layer, role);
    if (cfg.norm === "layer") {
      const beta = w.normBias(`${prefix}.bias`, layer, role);
      return b.op("LayerNormalization", [x, gamma, beta], { scope, attrs: { axis: { int: -1 }, epsilon: { float: cfg.normEpsilon } } });
    }
    // LlamaRMSNorm: statistics in float32 whatever the model type, scale applied after the cast back.
    const xf = ft === OnnxDataType.FLOAT16 ? b.op("Cast", [x], { scope, attrs: { to: { int: OnnxDataType.FLOAT } } }) : x;
    const f32 = OnnxDataType.FLOAT;
    const variance = b.op("ReduceMean", [b.op("Pow", [xf, b.scalar(2, f32)], { scope })], { scope, attrs: { axes: { ints: [-1] }, keepdims: { int: 1 } } });
    const rstd = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [variance, b.scalar(cfg.normEpsilon, f32)], { scope })], { scope })], { scope });
    let y = b.op("Mul", [xf, rstd], { scope });
    if (ft === OnnxDataType.FLOAT16) y = b.op("Cast", [y], { scope, attrs: { to: { int: ft } } });
    return b.op("Mul", [gamma, y], { scope });
  };

  const rotate = (scope: string, x: string): string => {
    const half = headDim / 2;
    const axis3 = b.int64([3]);
    const x1 = b.op("Slice", [x, b.int64([0]), b.int64([half]), axis3, b.int64([1])], { scope });
    const x2 = b.op("Slice", [x, b.int64([half]), b.int64([headDim]), axis3, b.int64([1])], { scope });
    const rotated = b.op("Concat", [b.op("Neg", [x2], { scope }), x1], { scope, attrs: { axis: { int: -1 } } });
    return b.op("Add", [b.op("Mul", [x, cos], { scope }), b.op("Mul", [rotated, sin], { scope })], { scope });
  };

  /** [B, S, n*D] -> [B, n, S, D] */
  const splitHeads = (scope: string, x: string, n: number): string =>
    b.op("Transpose", [b.op("Reshape", [x, b.int64([0, 0, n, headDim])], { scope })], { scope, attrs: { perm: { ints: [0, 2, 1, 3] } } });

  /** repeat_kv: [B, kvH, S, D] -> [B, H, S, D], each KV head serving heads/kvHeads query heads. */
  const repeatKv = (scope: string, x: string): string => {
    if (kvHeads === heads) return x;
    const expanded = b.op("Expand", [b.op("Unsqueeze", [x, b.int64([2])], { scope }), b.int64([1, 1, heads / kvHeads, 1, 1])], { scope });
    return b.op("Reshape", [expanded, b.int64([0, heads, -1, headDim])], { scope });
  };

  let residual = inputsEmbeds;
  for (let i = 0; i < cfg.layers; i++) {
    const layer = `/model/layers.${i}`;
    const attn = `${layer}/self_attn`;
    const xn = norm(`${layer}/input_layernorm`, i, "input_layernorm", residual);
    const q = rotate(attn, splitHeads(attn, linear(`${attn}/q_proj`, i, "q_proj", xn), heads));
    const k = repeatKv(attn, rotate(attn, splitHeads(attn, linear(`${attn}/k_proj`, i, "k_proj", xn), kvHeads)));
    const v = repeatKv(attn, splitHeads(attn, linear(`${attn}/v_proj`, i, "v_proj", xn), kvHeads));
    const kt = b.op("Transpose", [k], { scope: attn, attrs: { perm: { ints: [0, 1, 3, 2] } } });
    const scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, kt], { scope: attn }), b.scalar(1 / Math.sqrt(headDim))], { scope: attn }), mask], { scope: attn });
    // HF computes the softmax in float32 even for half-precision models.
    let probs: string;
    if (ft === OnnxDataType.FLOAT16) {
      const s32 = b.op("Cast", [scores], { scope: attn, attrs: { to: { int: OnnxDataType.FLOAT } } });
      probs = b.op("Cast", [b.op("Softmax", [s32], { scope: attn, attrs: { axis: { int: -1 } } })], { scope: attn, attrs: { to: { int: ft } } });
    } else {
      probs = b.op("Softmax", [scores], { scope: attn, attrs: { axis: { int: -1 } } });
    }
    const ctx = b.op("Transpose", [b.op("MatMul", [probs, v], { scope: attn })], { scope: attn, attrs: { perm: { ints: [0, 2, 1, 3] } } });
    const merged = b.op("Reshape", [ctx, b.int64([0, 0, heads * headDim])], { scope: attn });
    const o = linear(`${attn}/o_proj`, i, "o_proj", merged);
    const afterAttn = b.op("Add", [residual, o], { scope: layer });

    const mlp = `${layer}/mlp`;
    const hn = norm(`${layer}/post_attention_layernorm`, i, "post_attention_layernorm", afterAttn);
    const gate = linear(`${mlp}/gate_proj`, i, "gate_proj", hn);
    const up = linear(`${mlp}/up_proj`, i, "up_proj", hn);
    const act = b.op("Mul", [gate, b.op("Sigmoid", [gate], { scope: `${mlp}/act_fn` })], { scope: `${mlp}/act_fn` });
    const down = linear(`${mlp}/down_proj`, i, "down_proj", b.op("Mul", [act, up], { scope: mlp }));
    residual = b.op("Add", [afterAttn, down], { scope: layer });
  }

  let final = norm("/model/norm", undefined, "norm", residual);
  if (cfg.mergedInputs) {
    const useCache = b.input("use_cache_branch", OnnxDataType.BOOL, [1]);
    const keep = b.input("num_logits_to_keep", OnnxDataType.INT64, []);
    // Real merged exports choose between a with-past and a no-past subgraph with If; for a
    // prefill both compute the same function, which this Where spells out.
    final = b.op("Where", [useCache, final, final], { scope: "/model/merged" });
    // HF's logits_to_keep: the last k positions, 0 = all of them (-0 is start 0).
    const start = b.op("Neg", [b.op("Unsqueeze", [keep, b.int64([0])], { scope: "/model/merged" })], { scope: "/model/merged" });
    final = b.op("Slice", [final, start, b.int64([Number.MAX_SAFE_INTEGER]), b.int64([1])], { scope: "/model/merged" });
  }
  const weight = w.linear(`onnx::MatMul_${onnxId++}`, undefined, "lm_head");
  b.node("MatMul", [final, weight], { scope: "/lm_head", outputs: ["logits"] });
  b.output("logits", ft, ["batch_size", "sequence_length", cfg.vocab]);
  return w;
}
