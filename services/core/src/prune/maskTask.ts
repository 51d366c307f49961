/** Runs one MaskTask: on a mask thread over shared memory or a lent buffer, on the pool's own thread over the caller's weights. */
import type { MaskTask } from "./maskProtocol.js";
import { computeMask, computeMaskColumns, type WeightMatrix } from "./maskSelect.js";
import { OnnxDataType } from "../onnx/dtype.js";

export function runMaskTask(t: MaskTask, weights: SharedArrayBuffer, rows: SharedArrayBuffer): number {
  const total = t.weight.inDim * t.weight.outDim;
  // A lent weight is all here already: nothing to wait for.
  if (t.lent) return runMaskTaskOn(t, { ...t.weight, bytes: new Uint8Array(t.lent, t.byteOffset, total * elementBytes(t.weight.dataType)) });
  const copied = new Int32Array(rows);
  let known = 0;
  const awaitRows = (r: number): void => {
    while (known < r) {
      known = Atomics.load(copied, t.rowsSlot);
      if (known < r) Atomics.wait(copied, t.rowsSlot, known);
    }
  };
  return runMaskTaskOn(t, { ...t.weight, bytes: new Uint8Array(weights, t.byteOffset, total * elementBytes(t.weight.dataType)) }, awaitRows);
}

/** Runs a task on a weight given directly (the pool's own thread reads the caller's bytes). */
export function runMaskTaskOn(t: MaskTask, w: WeightMatrix, awaitRows?: (rows: number) => void): number {
  const mask = new Uint8Array(t.masks, t.maskOffset, w.inDim * w.outDim);
  if (t.range === "whole") {
    awaitRows?.(w.inDim);
    return computeMask(w, t.scale, t.options, mask).pruned;
  }
  return computeMaskColumns(w, t.scale, t.options, t.range.begin, t.range.end, mask, awaitRows);
}

/** float32: 4 bytes, float16 / bfloat16: 2 (checkMaskJob has rejected every other type). */
export function elementBytes(dataType: number): number {
  return dataType === OnnxDataType.FLOAT ? 4 : 2;
}
