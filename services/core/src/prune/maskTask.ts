/** Runs one MaskTask: on a mask thread over shared memory, on the pool's own thread over the caller's weights. */
import type { MaskTask } from "./maskProtocol.js";
import { computeMask, computeMaskColumns, type WeightMatrix } from "./maskSelect.js";
import { OnnxDataType } from "../onnx/dtype.js";

export function runMaskTask(t: MaskTask, weights: SharedArrayBuffer, masks: SharedArrayBuffer): number {
  const total = t.weight.inDim * t.weight.outDim;
  return runMaskTaskOn(t, { ...t.weight, bytes: new Uint8Array(weights, t.byteOffset, total * elementBytes(t.weight.dataType)) }, masks);
}

/** Runs a task on a weight given directly (the pool's own thread reads the caller's bytes). */
export function runMaskTaskOn(t: MaskTask, w: WeightMatrix, masks: SharedArrayBuffer): number {
  const mask = new Uint8Array(masks, t.maskOffset, w.inDim * w.outDim);
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
