/**
 * The decoder as the onnxruntime-genai model builder writes it: com.microsoft contrib ops
 * (SkipSimplifiedLayerNormalization / SkipLayerNormalization carrying the residual stream,
 * RotaryEmbedding, MultiHeadAttention or GroupQueryAttention), a KV-cache interface
 * (past_key_values.N.* in, present.N.* out), and readable weight names.
 */
import { OnnxDataType } from "../onnx/dtype.js";
import type { DecoderConfig } from "./config.js";
import { additiveMask } from "./decoderCommon.js";
import { DecoderWeights, type LinearRole, type NormRole } from "./decoderWeights.js";
import type { GraphBuilder } from "./graphBuilder.js";

export const MS_DOMAIN = "com.microsoft";

export function buildFusedDecoder(b: GraphBuilder, cfg: DecoderConfig): DecoderWeights {
  const w = new DecoderWeights(b, cfg);
  const ft = b.floatType;
  const { hidden, heads, kvHeads, headDim, layers } = cfg;
  const layerNorm = cfg.norm === "layer";
  const eps = { epsilon: { float: cfg.normEpsilon } };

  const inputsEmbeds = b.input("inputs_embeds", ft, ["batch_size", "sequence_length", hidden]);
  const attentionMask = b.input("attention_mask", OnnxDataType.INT64, ["batch_size", "total_sequence_length"]);
  const positionIds = b.input("position_ids", OnnxDataType.INT64, ["batch_size", "sequence_length"]);
  const past: Array<{ key: string; value: string }> = [];
  for (let i = 0; i < layers; i++) {
    const kvDims = ["batch_size", kvHeads, "past_sequence_length", headDim];
    past.push({
      key: b.input(`past_key_values.${i}.key`, ft, kvDims),
      value: b.input(`past_key_values.${i}.value`, ft, kvDims),
    });
  }

  // Everything the attention ops need from attention_mask is derived once, before layer 0.
  const maskScope = "/model/attn_mask_reformat/attn_mask_subgraph";
  let attentionBias = "";
  let seqlensK = "";
  let totalSeqLen = "";
  if (cfg.attention === "mha") {
    attentionBias = additiveMask(b, maskScope, inputsEmbeds, attentionMask);
  } else {
    const toInt32 = { to: { int: OnnxDataType.INT32 } };
    const valid = b.op("ReduceSum", [attentionMask, b.int64([1])], { scope: maskScope, attrs: { keepdims: { int: 0 } } });
    const last = b.op("Sub", [valid, b.int64([1], true)], { scope: maskScope });
    seqlensK = b.op("Cast", [last], { scope: maskScope, attrs: toInt32 });
    const total = b.op("Gather", [b.op("Shape", [attentionMask], { scope: maskScope }), b.int64([1], true)], { scope: maskScope, attrs: { axis: { int: 0 } } });
    totalSeqLen = b.op("Cast", [total], { scope: maskScope, attrs: toInt32 });
  }

  const linear = (scope: string, layer: number, role: LinearRole, x: string, module: "attn" | "mlp"): string => {
    const weight = w.linear(`model.layers.${layer}.${module}.${role}.MatMul.weight`, layer, role);
    return b.op("MatMul", [x, weight], { scope });
  };
  const normParams = (prefix: string, layer: number | undefined, role: NormRole | "norm"): string[] => {
    const gamma = w.normWeight(`${prefix}.weight`, layer, role);
    return layerNorm ? [gamma, w.normBias(`${prefix}.bias`, layer, role)] : [gamma];
  };
  const skipOp = layerNorm ? "SkipLayerNormalization" : "SkipSimplifiedLayerNormalization";
  /** Norm of (input + skip); also returns that sum, the residual stream after this point. */
  const skipNorm = (scope: string, input: string, skip: string, params: string[], withSum: boolean): { normed: string; sum: string } => {
    const outs = withSum ? [`${scope}/output_0`, "", "", `${scope}/output_3`] : [`${scope}/output_0`];
    b.node(skipOp, [input, skip, ...params], { scope, base: "SkipLayerNorm", domain: MS_DOMAIN, attrs: eps, outputs: outs });
    return { normed: outs[0]!, sum: outs[3] ?? "" };
  };

  // Layer 0 has nothing to add yet, so its input norm is the plain (non-skip) op.
  const firstScope = "/model/layers.0/input_layernorm";
  const firstParams = normParams("model.layers.0.input_layernorm", 0, "input_layernorm");
  let normed = b.node(layerNorm ? "LayerNormalization" : "SimplifiedLayerNormalization", [inputsEmbeds, ...firstParams], {
    scope: firstScope, base: "LayerNorm", attrs: { ...eps, axis: { int: -1 }, stash_type: { int: 1 } }, outputs: [`${firstScope}/output_0`],
  })[0]!;
  let residual = inputsEmbeds;
  const cosCache = w.rotaryTable("cos_cache", "cos", false);
  const sinCache = w.rotaryTable("sin_cache", "sin", false);
  const rotaryAttrs = { interleaved: { int: 0 }, num_heads: { int: 0 }, rotary_embedding_dim: { int: 0 } };

  const presents: string[] = [];
  let pendingDown = "";
  for (let i = 0; i < layers; i++) {
    const layer = `/model/layers.${i}`;
    if (i > 0) {
      const scope = `${layer}/input_layernorm`;
      const r = skipNorm(scope, residual, pendingDown, normParams(`model.layers.${i}.input_layernorm`, i, "input_layernorm"), true);
      normed = r.normed;
      residual = r.sum;
    }
    const attn = `${layer}/attn`;
    const q = linear(`${attn}/q_proj`, i, "q_proj", normed, "attn");
    const k = linear(`${attn}/k_proj`, i, "k_proj", normed, "attn");
    const v = linear(`${attn}/v_proj`, i, "v_proj", normed, "attn");
    const qRot = b.op("RotaryEmbedding", [q, positionIds, cosCache, sinCache], { scope: `${attn}/q_rotary`, domain: MS_DOMAIN, attrs: rotaryAttrs });
    const kRot = b.op("RotaryEmbedding", [k, positionIds, cosCache, sinCache], { scope: `${attn}/k_rotary`, domain: MS_DOMAIN, attrs: rotaryAttrs });
    const presentKey = `present.${i}.key`;
    const presentValue = `present.${i}.value`;
    const attnOp = cfg.attention === "mha" ? "MultiHeadAttention" : "GroupQueryAttention";
    const attnOut = `${attn}/${attnOp}/output_0`;
    const scale = { float: 1 / Math.sqrt(headDim) };
    if (cfg.attention === "mha") {
      b.node(attnOp, [qRot, kRot, v, "", "", attentionBias, past[i]!.key, past[i]!.value], {
        scope: attn, domain: MS_DOMAIN, attrs: { num_heads: { int: heads }, scale }, outputs: [attnOut, presentKey, presentValue],
      });
    } else {
      b.node(attnOp, [qRot, kRot, v, past[i]!.key, past[i]!.value, seqlensK, totalSeqLen], {
        scope: attn, domain: MS_DOMAIN,
        attrs: { num_heads: { int: heads }, kv_num_heads: { int: kvHeads }, scale, do_rotary: { int: 0 }, local_window_size: { int: -1 } },
        outputs: [attnOut, presentKey, presentValue],
      });
    }
    presents.push(presentKey, presentValue);
    const o = linear(`${attn}/o_proj`, i, "o_proj", attnOut, "attn");

    const post = skipNorm(`${layer}/post_attention_layernorm`, residual, o, normParams(`model.layers.${i}.post_attention_layernorm`, i, "post_attention_layernorm"), true);
    residual = post.sum;
    const mlp = `${layer}/mlp`;
    const gate = linear(`${mlp}/gate_proj`, i, "gate_proj", post.normed, "mlp");
    const up = linear(`${mlp}/up_proj`, i, "up_proj", post.normed, "mlp");
    const act = b.op("Mul", [gate, b.op("Sigmoid", [gate], { scope: `${mlp}/act_fn` })], { scope: `${mlp}/act_fn` });
    pendingDown = linear(`${mlp}/down_proj`, i, "down_proj", b.op("Mul", [act, up], { scope: mlp }), "mlp");
  }

  const finalScope = `/model/layers.${layers}/final_norm_layernorm`;
  const final = skipNorm(finalScope, residual, pendingDown, normParams(`model.layers.${layers}.final_norm_layernorm`, undefined, "norm"), false);
  const lmHead = w.linear("lm_head.MatMul.weight", undefined, "lm_head");
  b.node("MatMul", [final.normed, lmHead], { scope: "/lm_head", outputs: ["logits"] });
  // logits first, as in the builder's output list.
  b.output("logits", ft, ["batch_size", "sequence_length", cfg.vocab]);
  for (const name of presents) b.output(name, ft, ["batch_size", kvHeads, "total_sequence_length", headDim]);
  return w;
}
