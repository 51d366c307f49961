/** Runs one MaskTask over shared memory: the same code on the pool's own thread and on mask threads. */
import type { MaskTask } from "./maskProtocol.js";
import { computeMask, computeMaskColumns } from "./maskSelect.js";
import { OnnxDataType } from "../onnx/dtype.js";

export function runMaskTask(t: MaskTask, weights: SharedArrayBuffer, masks: SharedArrayBuffer): number {
  const total = t.weight.inDim * t.weight.outDim;
  const w = { ...t.weight, bytes: new Uint8Array(weights, t.byteOffset, total * elementBytes(t.weight.dataType)) };
  const mask = new Uint8Array(masks, t.maskOffset, total);
  if (t.range === "whole") {
    const result = computeMask(w, t.scale, t.options);
    mask.set(result.mask);
    return result.pruned;
  }
  return computeMaskColumns(w, t.scale, t.options, t.range.begin, t.range.end, mask);
}

/** float32: 4 bytes, float16 / bfloat16: 2 (checkMaskJob has rejected every other type). */
export function elementBytes(dataType: number): number {
  return dataType === OnnxDataType.FLOAT ? 4 : 2;
}
