/** Runs one MaskTask: on a mask thread over shared memory, on the pool's own thread over the caller's weights. */
import type { MaskTask } from "./maskProtocol.js";
import { computeMask, computeMaskColumns, type WeightMatrix } from "./maskSelect.js";
import { OnnxDataType } from "../onnx/dtype.js";

export function runMaskTask(t: MaskTask, weights: SharedArrayBuffer, masks: SharedArrayBuffer, rows: SharedArrayBuffer): number {
  const total = t.weight.inDim * t.weight.outDim;
  const copied = new Int32Array(rows);
  let known = 0;
  const awaitRows = (r: number): void => {
    while (known < r) {
      known = Atomics.load(copied, t.rowsSlot);
      if (known < r) Atomics.wait(copied, t.rowsSlot, known);
    }
  };
  return runMaskTaskOn(t, { ...t.weight, bytes: new Uint8Array(weights, t.byteOffset, total * elementBytes(t.weight.dataType)) }, masks, awaitRows);
}

/** Runs a task on a weight given directly (the pool's own thread reads the caller's bytes). */
export function runMaskTaskOn(t: MaskTask, w: WeightMatrix, masks: SharedArrayBuffer, awaitRows?: (rows: number) => void): number {
  const mask = new Uint8Array(masks, t.maskOffset, w.inDim * w.outDim);
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

const PAGE_BYTES = 4096;

/**
 * Writes every page of bytes [begin, end) of a shared buffer once, leaving each value as it is
 * (an atomic add of 0, safe while other threads write their own bytes of the same pages), so a
 * new buffer's pages are mapped before the threads that fill it get there.
 */
export function touchPages(buffer: SharedArrayBuffer, begin: number, end: number): void {
  const bytes = new Uint8Array(buffer);
  for (let i = begin; i < end; i += PAGE_BYTES) Atomics.add(bytes, i, 0);
}
