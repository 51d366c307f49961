/**
 * SparseGPT's Hessian of one linear's input (METHODS.md §1 step 2): H = (2/N) Σ_j A_jᵀA_j over
 * the pooled tokens of every sample, N the number of samples. Accumulated in float64, samples in
 * order, tokens in order, so every mode of the system gets the same bits. Linears that read the
 * same activation (q/k/v, gate/up) share one accumulator: the Hessian depends only on the input.
 */
import { halfToFloatTable } from "../onnx/dtype.js";
import { NumericError } from "../errors.js";
import type { WireTensor } from "../runtime/wireTensor.js";

/** Tokens whose rank-1 terms are added together (each entry still takes them in token order). */
const TOKENS_AT_ONCE = 4;

export class HessianAccumulator {
  /** Upper triangle (row-major, i <= j) of Σ AᵀA; the lower half is filled by finish(). */
  private readonly sum: Float64Array;
  /** up to TOKENS_AT_ONCE pooled tokens' activations, as float64, row after row */
  private readonly rows: Float64Array;

  constructor(readonly tensor: string, readonly channels: number) {
    this.sum = new Float64Array(channels * channels);
    this.rows = new Float64Array(TOKENS_AT_ONCE * channels);
  }

  /**
   * Bytes this accumulator holds (for the shard planner's memory estimate): the sum and a row;
   * the other held rows (3n float64) are left out, as the slab copies of the compression are.
   */
  static bytes(channels: number): number {
    return channels * channels * 8 + channels * 8;
  }

  /**
   * Adds the pooled tokens of one sample's activation ([.., T, channels]): Σ[i,j] += a_i·a_j per
   * token, in token order, a term with a_i = 0 left out. Four tokens at a time, so each entry is
   * read and written once per four terms (the sum matrix does not fit a cache) with the same
   * additions in the same order.
   */
  add(act: WireTensor, pool: Uint8Array, sampleSubject: string): void {
    const n = this.channels;
    const channels = act.dims[act.dims.length - 1]!;
    if (channels !== n) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${channels} channels, expected ${n}`);
    const tokens = act.data.length / n;
    if (tokens !== pool.length) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${tokens} tokens, the sample ${pool.length}`);
    if (act.type !== "float32" && act.type !== "float16") throw new NumericError(this.tensor, `activations of type ${act.type} are not supported`);
    const table = act.type === "float16" ? halfToFloatTable() : null;
    const rows = this.rows;
    let held = 0;
    for (let t = 0; t < tokens; t++) {
      if (!pool[t]) continue;
      const base = t * n;
      const at = held * n;
      if (table) for (let c = 0; c < n; c++) rows[at + c] = table[(act.data as Uint16Array)[base + c]!]!;
      else for (let c = 0; c < n; c++) rows[at + c] = (act.data as Float32Array)[base + c]!;
      for (let i = 0; i < n; i++) {
        if (!Number.isFinite(rows[at + i]!)) throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (token ${t}, channel ${i})`);
      }
      if (++held === TOKENS_AT_ONCE) {
        this.addRows(held);
        held = 0;
      }
    }
    this.addRows(held);
  }

  /** Adds the first `count` held rows' terms, row 0 first. */
  private addRows(count: number): void {
    const n = this.channels;
    const rows = this.rows;
    const sum = this.sum;
    if (count === TOKENS_AT_ONCE) {
      for (let i = 0; i < n; i++) {
        const a0 = rows[i]!;
        const a1 = rows[n + i]!;
        const a2 = rows[2 * n + i]!;
        const a3 = rows[3 * n + i]!;
        if (a0 === 0 || a1 === 0 || a2 === 0 || a3 === 0) {
          for (let r = 0; r < count; r++) this.addRow(r, i);
          continue;
        }
        const off = i * n;
        for (let j = i; j < n; j++) {
          let x = sum[off + j]!;
          x += a0 * rows[j]!;
          x += a1 * rows[n + j]!;
          x += a2 * rows[2 * n + j]!;
          x += a3 * rows[3 * n + j]!;
          sum[off + j] = x;
        }
      }
      return;
    }
    for (let i = 0; i < n; i++) for (let r = 0; r < count; r++) this.addRow(r, i);
  }

  /** Row i of held row r's term: Σ[i, j≥i] += a_i·a_j (nothing for a_i = 0). */
  private addRow(r: number, i: number): void {
    const n = this.channels;
    const at = r * n;
    const a = this.rows[at + i]!;
    if (a === 0) return;
    const sum = this.sum;
    const off = i * n;
    for (let j = i; j < n; j++) sum[off + j]! += a * this.rows[at + j]!;
  }

  /** H = (2/N)·Σ, full symmetric, row-major [in, in]. The accumulator must not be used after. */
  finish(samples: number): Float64Array {
    const n = this.channels;
    const h = this.sum;
    const scale = 2 / samples;
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = h[i * n + j]! * scale;
        h[i * n + j] = v;
        h[j * n + i] = v;
      }
    }
    return h;
  }
}
