/** Messages between a MaskPool and its mask threads (maskThread.ts). */
import type { MaskOptions, WeightMatrix } from "./maskSelect.js";

/** One share of one linear: columns [begin, end) of a column-scope mask, or a whole matrix-scope one. */
export interface MaskTask {
  /**
   * the weight without its bytes, which sit in the thread's kernel memory at byteOffset, or in
   * `lent` at byteOffset
   */
  weight: Omit<WeightMatrix, "bytes">;
  byteOffset: number;
  /** the weight's own buffer, moved here for the task (a transfer) and moved back with the answer */
  lent?: ArrayBuffer;
  scale: Float64Array | null;
  options: MaskOptions;
  /** the linear's whole mask (in·out bytes from maskOffset): shared, each task writes its columns */
  masks: SharedArrayBuffer;
  maskOffset: number;
  range: { begin: number; end: number } | "whole";
  /** the slot of MaskRequest.rows that counts this weight's input rows copied so far */
  rowsSlot: number;
}

export interface MaskRequest {
  id: number;
  /**
   * Int32 per weight of the batch: how many of its input rows the pool has copied into the
   * thread's memory (it copies while the threads run; each waits for the rows it reads next).
   */
  rows: SharedArrayBuffer;
  tasks: MaskTask[];
}

/**
 * pruned and ms per task: what it pruned, and how long it took from its start (waits for rows
 * included). `returned`: the tasks' lent buffers, moved back whatever the outcome.
 */
export type MaskResponse = ({ ok: true; pruned: number[]; ms: number[] } | { ok: false; error: string }) & { id: number; returned: ArrayBuffer[] };
