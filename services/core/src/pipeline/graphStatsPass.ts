/**
 * DESIGN.md §2 steps 1-3 with --stats graph: the block's graph (graph/statsOutputs.ts) computes
 * each sample's pooled sums of squares per input channel, and ATV's per-token cosine distances,
 * so only those vectors leave onnxruntime. A fixed pool (Wanda) takes one forward per sample.
 * ATV's pool depends on every sample's distances: the first forward yields the distances (and
 * the dense next states), the second feeds each sample's pool mask and yields the sums.
 * Accumulators are fed in sample order, as on the host.
 */
import type { CalibSample } from "../calib/calibSet.js";
import { InvalidArgumentError } from "../errors.js";
import type { LinearInfo } from "../graph/linears.js";
import type { StatsGraph } from "../graph/statsOutputs.js";
import { NO_POOL_FACTS, type Accumulator, type CalibrationNeeds, type PoolFacts, type PoolObserver, type SampleSumsAccumulator } from "../methods/index.js";
import type { WireTensor } from "../runtime/wireTensor.js";

export interface GraphStatsIO<S> {
  samples: readonly CalibSample[];
  graph: StatsGraph;
  /**
   * Sample j's dense forward, with `pool` fed to the graph's pool input (absent: its default),
   * returning the state that entered the block and the `fetches` outputs.
   */
  run(j: number, pool: Uint8Array | undefined, fetches: readonly string[]): Promise<{ state: S; out: Record<string, WireTensor> }>;
  /** the block's state outputs to fetch from the pass that propagates (none when not propagating) */
  stateOutputs: readonly string[];
  /** called in sample order with the dense forward's state and outputs, when propagating */
  emit?: (j: number, state: S, out: Record<string, WireTensor>) => void;
  subject(j: number): string;
  signal?: AbortSignal;
  /** a replica's own samples [first, end) (default: all) */
  first?: number;
  end?: number;
  /** a replica's observer gets the other replicas' observations here, before it selects */
  observed?: (observer: PoolObserver) => Promise<void>;
  /** called after sample j fed the accumulators (in sample order), with them in a fixed order */
  fed?: (j: number, accumulators: readonly Accumulator[]) => void;
}

export async function statsInGraph<A extends Accumulator, S>(
  io: GraphStatsIO<S>, linears: readonly LinearInfo[], needs: CalibrationNeeds<A>,
): Promise<{ stats: Map<string, A>; facts: PoolFacts }> {
  const { samples, graph, signal } = io;
  const sumsOf = new Map(graph.sums.map((s) => [s.activation, s.output]));
  // One accumulator per key (linears reading the same activation share one).
  const accs = new Map<string, { acc: SampleSumsAccumulator; output: string }>();
  const stats = new Map<string, A>();
  for (const l of linears) {
    const spec = needs.accumulator(l);
    let entry = accs.get(spec.key);
    if (!entry) {
      const acc = spec.create();
      const output = sumsOf.get(l.activation);
      if (!isSampleSums(acc) || output === undefined) {
        throw new InvalidArgumentError("stats", `graph: ${spec.key} of ${l.weight} needs whole activations, which --stats graph does not copy out; use --stats host`);
      }
      accs.set(spec.key, (entry = { acc, output }));
    }
    stats.set(l.weight, entry.acc as unknown as A);
  }
  const sumOutputs = [...new Set([...accs.values()].map((e) => e.output))];
  const ordered = [...accs.values()].map((e) => e.acc as Accumulator);
  const feed = (j: number, out: Record<string, WireTensor>) => {
    for (const { acc, output } of accs.values()) acc.addSampleSums(out[output]!.data as Float64Array, io.subject(j), j);
    io.fed?.(j, ordered);
  };
  const first = io.first ?? 0;
  const end = io.end ?? samples.length;
  const rule = needs.pool;
  if (rule.kind === "fixed") {
    for (let j = first; j < end; j++) {
      signal?.throwIfAborted();
      const { state, out } = await io.run(j, rule.pool(samples[j]!), [...io.stateOutputs, ...sumOutputs]);
      feed(j, out);
      io.emit?.(j, state, out);
    }
    return { stats, facts: NO_POOL_FACTS };
  }
  const distance = graph.distance?.output;
  if (distance === undefined) throw new InvalidArgumentError("stats", "graph: the block's graph measures no token distances for this pool rule; use --stats host");
  const observer = rule.start(samples);
  for (let j = first; j < end; j++) {
    signal?.throwIfAborted();
    const { state, out } = await io.run(j, undefined, [...io.stateOutputs, distance]);
    observer.observe(j, { sample: samples[j]!, x: [], y: [], distances: out[distance]!.data as Float64Array, subject: io.subject(j) });
    io.emit?.(j, state, out);
  }
  await io.observed?.(observer);
  const selection = observer.select();
  for (let j = first; j < end; j++) {
    signal?.throwIfAborted();
    feed(j, (await io.run(j, selection.pools[j]!, sumOutputs)).out);
  }
  return { stats, facts: selection.facts };
}

function isSampleSums(acc: Accumulator): acc is SampleSumsAccumulator {
  return typeof (acc as Partial<SampleSumsAccumulator>).addSampleSums === "function";
}
