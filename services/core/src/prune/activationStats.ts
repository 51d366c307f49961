/**
 * s[c] = (1/N) * sum_j sum_{t in pool_j} A_j[t, c]^2 (DESIGN.md §2 step 3), accumulated in
 * float64, samples in order, tokens in order, so every mode of the system gets the same bits.
 */
import { halfToFloatTable } from "../onnx/dtype.js";
import { NumericError } from "../errors.js";
import type { WireTensor } from "../runtime/wireTensor.js";

export class ChannelStats {
  readonly sum: Float64Array;

  constructor(readonly tensor: string, readonly channels: number) {
    this.sum = new Float64Array(channels);
  }

  /** Adds the pooled tokens of one sample's activation ([.., T, channels]). */
  add(act: WireTensor, pool: Uint8Array, sampleSubject: string): void {
    const channels = act.dims[act.dims.length - 1]!;
    if (channels !== this.channels) {
      throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${channels} channels, expected ${this.channels}`);
    }
    const tokens = act.data.length / channels;
    if (tokens !== pool.length) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${tokens} tokens, the sample ${pool.length}`);
    const sum = this.sum;
    if (act.type === "float16") {
      const table = halfToFloatTable();
      const data = act.data as Uint16Array;
      for (let t = 0; t < tokens; t++) {
        if (!pool[t]) continue;
        const base = t * channels;
        for (let c = 0; c < channels; c++) {
          const v = table[data[base + c]!]!;
          sum[c]! += v * v;
        }
      }
    } else if (act.type === "float32") {
      const data = act.data as Float32Array;
      for (let t = 0; t < tokens; t++) {
        if (!pool[t]) continue;
        const base = t * channels;
        for (let c = 0; c < channels; c++) {
          const v = data[base + c]!;
          sum[c]! += v * v;
        }
      }
    } else {
      throw new NumericError(this.tensor, `activations of type ${act.type} are not supported`);
    }
    for (let c = 0; c < channels; c++) {
      if (!Number.isFinite(sum[c]!)) {
        throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (channel ${c})`);
      }
    }
  }

  /**
   * Adds one sample's own sums over its pooled tokens, computed elsewhere (inside the block's
   * graph with --stats graph): sum[c] += v[c], samples in order.
   */
  addSampleSums(v: Float32Array | Float64Array, sampleSubject: string): void {
    if (v.length !== this.channels) throw new NumericError(`${this.tensor} (${sampleSubject})`, `got ${v.length} channel sums, expected ${this.channels}`);
    const sum = this.sum;
    for (let c = 0; c < v.length; c++) sum[c]! += v[c]!;
    for (let c = 0; c < v.length; c++) {
      if (!Number.isFinite(sum[c]!)) {
        throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (channel ${c})`);
      }
    }
  }

  /** The mean over the N samples. */
  mean(samples: number): Float64Array {
    return this.sum.map((v) => v / samples);
  }
}
