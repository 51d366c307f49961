/** Messages between a MaskPool and its mask threads (maskThread.ts). */
import type { MaskOptions, WeightMatrix } from "./maskSelect.js";

/** One share of one linear: columns [begin, end) of a column-scope mask, or a whole matrix-scope one. */
export interface MaskTask {
  /** the weight without its bytes, which sit in the thread's kernel memory at byteOffset */
  weight: Omit<WeightMatrix, "bytes">;
  byteOffset: number;
  scale: Float64Array | null;
  options: MaskOptions;
  /** where this linear's mask starts in MaskRequest.masks */
  maskOffset: number;
  range: { begin: number; end: number } | "whole";
  /** the slot of MaskRequest.rows that counts this weight's input rows copied so far */
  rowsSlot: number;
}

export interface MaskRequest {
  id: number;
  masks: SharedArrayBuffer;
  /**
   * Int32 per weight of the batch: how many of its input rows the pool has copied into the
   * thread's memory (it copies while the threads run; each waits for the rows it reads next).
   */
  rows: SharedArrayBuffer;
  tasks: MaskTask[];
  /**
   * Bytes [begin, end) of masks whose pages this thread touches (without changing a value) before
   * its tasks, so the fresh buffer's page faults happen while the pool's thread copies weights.
   */
  touch?: { begin: number; end: number };
  /**
   * After its tasks, the thread allocates a buffer of this many bytes for the next batch's masks
   * and sends it back (a new buffer of a block's masks is zeroed by the allocator, which takes
   * the thread that asks for it a while: better this one, at the end of its share).
   */
  spare?: number;
}

export type MaskResponse = { id: number; ok: true; pruned: number[]; spare?: SharedArrayBuffer } | { id: number; ok: false; error: string };
