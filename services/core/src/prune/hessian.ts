/**
 * SparseGPT's Hessian of one linear's input (METHODS.md §1 step 2): H = (2/N) Σ_j A_jᵀA_j over
 * the pooled tokens of every sample, N the number of samples. Accumulated in float64, samples in
 * order, tokens in order, so every mode of the system gets the same bits. Linears that read the
 * same activation (q/k/v, gate/up) share one accumulator: the Hessian depends only on the input.
 */
import { halfToFloatTable } from "../onnx/dtype.js";
import { NumericError } from "../errors.js";
import type { WireTensor } from "../runtime/wireTensor.js";

export class HessianAccumulator {
  /** Upper triangle (row-major, i <= j) of Σ AᵀA; the lower half is filled by finish(). */
  private readonly sum: Float64Array;
  private readonly row: Float64Array;

  constructor(readonly tensor: string, readonly channels: number) {
    this.sum = new Float64Array(channels * channels);
    this.row = new Float64Array(channels);
  }

  /** Bytes this accumulator holds (for the shard planner's memory estimate). */
  static bytes(channels: number): number {
    return channels * channels * 8 + channels * 8;
  }

  /** Adds the pooled tokens of one sample's activation ([.., T, channels]). */
  add(act: WireTensor, pool: Uint8Array, sampleSubject: string): void {
    const n = this.channels;
    const channels = act.dims[act.dims.length - 1]!;
    if (channels !== n) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${channels} channels, expected ${n}`);
    const tokens = act.data.length / n;
    if (tokens !== pool.length) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${tokens} tokens, the sample ${pool.length}`);
    if (act.type !== "float32" && act.type !== "float16") throw new NumericError(this.tensor, `activations of type ${act.type} are not supported`);
    const table = act.type === "float16" ? halfToFloatTable() : null;
    const row = this.row;
    const sum = this.sum;
    for (let t = 0; t < tokens; t++) {
      if (!pool[t]) continue;
      const base = t * n;
      if (table) for (let c = 0; c < n; c++) row[c] = table[(act.data as Uint16Array)[base + c]!]!;
      else for (let c = 0; c < n; c++) row[c] = (act.data as Float32Array)[base + c]!;
      for (let i = 0; i < n; i++) {
        const a = row[i]!;
        if (!Number.isFinite(a)) throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (token ${t}, channel ${i})`);
        if (a === 0) continue;
        const off = i * n;
        for (let j = i; j < n; j++) sum[off + j]! += a * row[j]!;
      }
    }
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
