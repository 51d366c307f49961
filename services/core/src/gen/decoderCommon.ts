/**
 * Pieces both decoder flavours share: the additive causal + padding mask (computed once, outside
 * the layers, as exporters do) and the float limits it uses.
 */
import { OnnxDataType } from "../onnx/dtype.js";
import type { GraphBuilder } from "./graphBuilder.js";

/** Most negative finite value of the float type: a masked score that cannot overflow in Where. */
export function maskValue(floatType: number): number {
  return floatType === OnnxDataType.FLOAT16 ? -65504 : -3.4028234663852886e38;
}

/**
 * Bias [batch, 1, seq, total] that is 0 where a query may attend and the float minimum where the
 * key lies in the future or is padding (attention_mask 0). Query i sits at absolute position
 * total - seq + i, so a non-empty KV cache would also be handled.
 */
export function additiveMask(b: GraphBuilder, scope: string, inputsEmbeds: string, attentionMask: string): string {
  const one = b.int64([1], true);
  const zero = b.int64([0], true);
  const gather0 = { axis: { int: 0 } };
  const total = b.op("Gather", [b.op("Shape", [attentionMask], { scope }), one], { scope, attrs: gather0 });
  const seq = b.op("Gather", [b.op("Shape", [inputsEmbeds], { scope }), one], { scope, attrs: gather0 });
  const past = b.op("Sub", [total, seq], { scope });
  const cols = b.op("Range", [zero, total, one], { scope });
  const rows = b.op("Unsqueeze", [b.op("Range", [past, total, one], { scope }), b.int64([1])], { scope });
  const future = b.op("Greater", [cols, rows], { scope });
  const padded = b.op("Unsqueeze", [b.op("Equal", [attentionMask, zero], { scope }), b.int64([1, 2])], { scope });
  const blocked = b.op("Or", [future, padded], { scope });
  return b.op("Where", [blocked, b.scalar(maskValue(b.floatType)), b.scalar(0)], { scope });
}
