/**
 * Wanda's and ATV's statistic as an accumulator: per input channel, the sum over the pooled
 * tokens of A[t, c]^2 (prune/activationStats.ts), one per activation tensor so the linears that
 * read it share it. Replicas of a stage exchange each sample's own sums (its record) and reduce
 * them in sample order (pipeline/sampleExchange.ts).
 */
import type { LinearInfo } from "../graph/linears.js";
import { ChannelStats } from "../prune/activationStats.js";
import type { AccumulatorInput, AccumulatorSpec, ExchangeableAccumulator, SampleSumsAccumulator } from "./method.js";

export class ChannelSquares implements ExchangeableAccumulator, SampleSumsAccumulator {
  private readonly stats: ChannelStats;
  private meanOf: { samples: number; mean: Float64Array } | undefined;
  private last: { index: number; sums: Float64Array } | undefined;

  constructor(tensor: string, channels: number) {
    this.stats = new ChannelStats(tensor, channels);
  }

  add({ index, input, pool, subject }: AccumulatorInput): void {
    this.last = { index, sums: this.stats.add(input, pool, subject) };
    this.meanOf = undefined;
  }

  record(j: number): Float64Array {
    if (this.last?.index !== j) throw new RangeError(`${this.stats.tensor}: the last sample added is ${this.last?.index ?? "none"}, not ${j}`);
    return this.last.sums;
  }

  reduce(records: readonly Float64Array[]): void {
    this.stats.reset();
    records.forEach((p, j) => this.stats.addSums(p, `${this.stats.tensor}, sample ${j}`));
    this.meanOf = undefined;
    this.last = undefined;
  }

  /** One sample's sums from the block's graph (--stats graph): its record, as add()'s. */
  addSampleSums(sums: Float32Array | Float64Array, subject: string, index?: number): void {
    const own = Float64Array.from(sums);
    this.stats.addSums(own, subject);
    this.last = index === undefined ? undefined : { index, sums: own };
    this.meanOf = undefined;
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
