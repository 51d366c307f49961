/**
 * Wanda's and ATV's statistic as an accumulator: per input channel, the sum over the pooled
 * tokens of A[t, c]^2 (prune/activationStats.ts), one per activation tensor so the linears that
 * read it share it.
 */
import type { LinearInfo } from "../graph/linears.js";
import { ChannelStats } from "../prune/activationStats.js";
import type { AccumulatorInput, AccumulatorSpec, SampleSumsAccumulator } from "./method.js";

export class ChannelSquares implements SampleSumsAccumulator {
  private readonly stats: ChannelStats;
  private meanOf: { samples: number; mean: Float64Array } | undefined;

  constructor(tensor: string, channels: number) {
    this.stats = new ChannelStats(tensor, channels);
  }

  add({ input, pool, subject }: AccumulatorInput): void {
    this.stats.add(input, pool, subject);
  }

  addSampleSums(sums: Float32Array | Float64Array, subject: string): void {
    this.stats.addSampleSums(sums, subject);
  }

  /** s[c] = (1/N) sum_j sum_{t in pool_j} A_j[t, c]^2, computed once for the linears sharing it. */
  mean(samples: number): Float64Array {
    if (this.meanOf?.samples !== samples) this.meanOf = { samples, mean: this.stats.mean(samples) };
    return this.meanOf.mean;
  }
}

export function channelSquares(linear: LinearInfo): AccumulatorSpec<ChannelSquares> {
  return { key: `channel-squares:${linear.activation}`, create: () => new ChannelSquares(linear.activation, linear.inDim) };
}
