/**
 * s[c] = (1/N) * sum_j sum_{t in pool_j} A_j[t, c]^2 (DESIGN.md §2 step 3), accumulated in
 * float64, samples in order, tokens in order, so every mode of the system gets the same bits.
 * Each sample's own sum p_j[c] (tokens in order) is formed first and then added (samples in
 * order): replicas that each saw a share of the samples exchange their p_j and add them in the
 * same order, which gives the one-process bits whatever the number of replicas.
 */
import { halfToFloatTable } from "../onnx/dtype.js";
import { NumericError } from "../errors.js";
import type { WireTensor } from "../runtime/wireTensor.js";

export class ChannelStats {
  readonly sum: Float64Array;

  constructor(readonly tensor: string, readonly channels: number) {
    this.sum = new Float64Array(channels);
  }

  /** Adds the pooled tokens of one sample's activation ([.., T, channels]); returns that sample's own sums. */
  add(act: WireTensor, pool: Uint8Array, sampleSubject: string): Float64Array {
    const own = this.sampleSums(act, pool, sampleSubject);
    this.addSums(own, sampleSubject);
    return own;
  }

  /** p[c] = sum over the pooled tokens of one sample (tokens in order) of A[t, c]^2. */
  sampleSums(act: WireTensor, pool: Uint8Array, sampleSubject: string): Float64Array {
    const channels = act.dims[act.dims.length - 1]!;
    if (channels !== this.channels) {
      throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${channels} channels, expected ${this.channels}`);
    }
    const tokens = act.data.length / channels;
    if (tokens !== pool.length) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${tokens} tokens, the sample ${pool.length}`);
    const sum = new Float64Array(channels);
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
    return sum;
  }

  /** Adds one sample's sums p (from sampleSums, here or on another replica). */
  addSums(p: Float32Array | Float64Array, sampleSubject: string): void {
    if (p.length !== this.channels) throw new NumericError(`${this.tensor} (${sampleSubject})`, `got ${p.length} channel sums, expected ${this.channels}`);
    const sum = this.sum;
    for (let c = 0; c < p.length; c++) sum[c]! += p[c]!;
    for (let c = 0; c < p.length; c++) {
      if (!Number.isFinite(sum[c]!)) {
        throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (channel ${c})`);
      }
    }
  }

  /** Starts over (a replica's partial sums are replaced by every sample's, in sample order). */
  reset(): void {
    this.sum.fill(0);
  }

  /** The mean over the N samples. */
  mean(samples: number): Float64Array {
    return this.sum.map((v) => v / samples);
  }
}
