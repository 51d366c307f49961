/** Messages between a MaskPool and its mask threads (maskThread.ts). */
import type { MaskOptions, WeightMatrix } from "./maskSelect.js";

/** One share of one linear: columns [begin, end) of a column-scope mask, or a whole matrix-scope one. */
export interface MaskTask {
  /** the weight without its bytes, which sit in MaskRequest.weights at byteOffset */
  weight: Omit<WeightMatrix, "bytes">;
  byteOffset: number;
  scale: Float64Array | null;
  options: MaskOptions;
  /** where this linear's mask starts in MaskRequest.masks */
  maskOffset: number;
  range: { begin: number; end: number } | "whole";
}

export interface MaskRequest {
  id: number;
  weights: SharedArrayBuffer;
  masks: SharedArrayBuffer;
  tasks: MaskTask[];
}

export type MaskResponse = { id: number; ok: true; pruned: number[] } | { id: number; ok: false; error: string };
