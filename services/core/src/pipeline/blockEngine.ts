/**
 * DESIGN.md §2 steps 1-7 for one block: dense forward, token pools, accumulators per linear,
 * compression of every linear of the block, and the forward that feeds the next block. What the
 * forward accumulates and how a linear is compressed belong to the method (methods/); this class
 * knows no method. The
 * single-process pruner and the cluster workers both run blocks through this class, so every
 * mode computes the same bits.
 *
 * A block takes its input states through a StateSource, so a cluster worker can start on sample
 * 0 while later samples are still arriving from the previous worker, and it reports each
 * next-state sample as soon as it exists, so the next worker can start early in turn. Samples
 * are always processed in order, so the bits do not depend on when they arrive.
 */
import { toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../../../gen/onnx_pb.js";
import type { CalibSample } from "../calib/calibSet.js";
import { GraphError } from "../errors.js";
import type { BlockPartition } from "../graph/blockPartition.js";
import { buildCutModel, type StageCut, type StagePlan } from "../graph/blockCut.js";
import type { GraphIndex } from "../graph/graphIndex.js";
import type { LinearInfo } from "../graph/linears.js";
import { attentionProbs, linearOutput, type ObservedTensor } from "../graph/observedTensors.js";
import { addStatsOutputs, NO_POOL, planStatsGraph, STATS_POOL_INPUT, type StatsGraph } from "../graph/statsOutputs.js";
import { ortType, typeName } from "../onnx/dtype.js";
import type { LoadedModel } from "../onnx/modelFile.js";
import type { TensorData } from "../onnx/tensorData.js";
import {
  createMethod, DEFAULT_ACCUMULATOR_BUDGET_BYTES, NO_POOL_FACTS, isExchangeable, isSumming, linearCompressCost, type Accumulator, type CalibrationNeeds, type Compression,
  type ExchangeableAccumulator, type SummingAccumulator, type MaskSelector, type Method, type PoolFacts, type PoolObserver,
} from "../methods/index.js";
import type { LinearTargets, ProfilePrePass } from "../profiles/index.js";
import { applyMask, type WeightMatrix } from "../prune/maskSelect.js";
import { MaskBuffers } from "../prune/maskBuffers.js";
import { MaskPool } from "../prune/maskPool.js";
import { INLINE_SOLVER, type Solver } from "../prune/solvePool.js";
import { BufferPool } from "../runtime/bufferPool.js";
import type { InferenceHost, SessionHandle } from "../runtime/inferenceHost.js";
import type { TensorData as TypedData, WireTensor } from "../runtime/wireTensor.js";
import type { BlockReport, LayerReport } from "./report.js";
import type { ResolvedSpec } from "./pruneSpec.js";
import type { SampleFeeds } from "./sampleFeeds.js";
import { replicaSamples, type SampleExchange } from "./sampleExchange.js";
import { statsInGraph } from "./graphStatsPass.js";
import { compressionFromRecord, compressionRecord, compressShares, type CompressShares } from "./compressShares.js";

/** The hidden-path tensors of one sample at a block boundary. */
export type SampleState = Map<string, WireTensor>;

/**
 * The states entering a block, possibly still arriving; get(j) may be called more than once.
 * It holds samples [first, first + count) (a replica's share; first defaults to 0).
 */
export interface StateSource {
  readonly count: number;
  readonly first?: number;
  get(sample: number): Promise<SampleState>;
}

/** A StateSource over states already in memory, of samples first, first + 1, ... */
export function arraySource(states: readonly SampleState[], first = 0): StateSource {
  return {
    count: states.length,
    first,
    get: (j) => {
      const s = states[j - first];
      return s ? Promise.resolve(s) : Promise.reject(new RangeError(`no state for sample ${j} (have ${first}..${first + states.length - 1})`));
    },
  };
}

/** A source whose samples are numbered from 0 (a replica's own data plane) seen as samples first, first + 1, ... */
export function offsetSource(source: StateSource, first: number): StateSource {
  if (first === 0) return source;
  return { count: source.count, first, get: (j) => source.get(j - first) };
}

export interface RunBlockOptions {
  /**
   * Called with each sample's state after the block as soon as it is computed, in sample order
   * (from the pruned forward for sequential propagation, from the dense forward for dense).
   */
  onNext?: (sample: number, state: SampleState) => void;
  /** Checked between samples: aborting stops the block with the signal's reason. */
  signal?: AbortSignal;
}

export interface EngineContext {
  loaded: LoadedModel;
  data: TensorData;
  index: GraphIndex;
  partition: BlockPartition;
  plan: StagePlan;
  spec: ResolvedSpec;
  host: InferenceHost;
  samples: readonly CalibSample[];
  feeds: readonly SampleFeeds[];
  /** element type of hidden states and activations */
  floatType: number;
  /** the linears to prune (the plan's), with their targets by weight name; others stay dense */
  targets: LinearTargets;
  /** the method to run; absent: the registry's method named by spec.method */
  method?: Method;
  /**
   * Bytes of accumulators (SparseGPT's Hessians) one dense forward may feed at once; beyond it
   * the block's linears are calibrated in groups, one forward each (same bits, less memory).
   */
  accumulatorBudgetBytes?: number;
  /** threads for mask selection (started and closed by the caller); default: this thread only */
  maskPool?: MaskPool;
  /** threads for SparseGPT's solves (a SolvePool, closed by the caller); default: this thread */
  solver?: Solver;
  /**
   * This run is one replica of its stage: it calibrates and propagates its own share of the
   * samples and exchanges per-sample records with the other replicas (data-parallel calibration).
   */
  exchange?: SampleExchange;
}


/** One linear after the compress step, for report.json. */
/** What a block's accumulators read beyond the linears' inputs (graph/observedTensors.ts). */
interface Observed {
  /** output tensor by weight name */
  output: Map<string, string>;
  attention: string | undefined;
  tensors: ObservedTensor[];
}

interface Compressed {
  linear: LinearInfo;
  dataType: number;
  target: number;
  pruned: number;
  facts: Record<string, number> | undefined;
}

export interface PrunedWeight {
  name: string;
  bytes: Uint8Array;
}

export interface BlockResult {
  /** state after this block for every sample of this run's share (empty for magnitude, which needs no forward) */
  next: SampleState[];
  report: BlockReport;
  layers: LayerReport[];
  /** the pruned weights, to be written out */
  weights: PrunedWeight[];
}

export class BlockEngine {
  private readonly pool = new BufferPool();
  private readonly maskBuffers = new MaskBuffers();
  private readonly method: Method;
  /** sessions whose graph computes the statistics (--stats graph) */
  private readonly statsGraphs = new WeakMap<SessionHandle, StatsGraph>();

  /** the samples this run calibrates and propagates: all, or its replica's share */
  readonly first: number;
  readonly end: number;

  constructor(private readonly ctx: EngineContext) {
    this.method = ctx.method ?? createMethod(ctx.spec);
    const N = ctx.samples.length;
    ({ first: this.first, end: this.end } = ctx.exchange ? replicaSamples(N, ctx.exchange.slice.replicas, ctx.exchange.slice.replica) : { first: 0, end: N });
  }

  /** Gives a finished block's weight buffers back for the next block (after they are written). */
  recycle(weights: readonly PrunedWeight[]): void {
    for (const w of weights) this.release(w.bytes);
  }

  /** A weight buffer back to where it came from: the mask pool's memory, or the plain buffers. */
  private release(bytes: Uint8Array): void {
    if (this.ctx.maskPool?.releaseWeightBuffer(bytes)) return;
    if (bytes.buffer instanceof ArrayBuffer) this.pool.release(bytes.buffer);
  }

  /** State entering block 0: the prologue's outputs (embedding lookup), or the main input itself. */
  async initialStates(): Promise<SampleState[]> {
    const { plan, host, feeds } = this.ctx;
    const prologue = plan.prologue;
    const session = prologue ? await this.loadSession(prologue, new Map()) : undefined;
    try {
      const states: SampleState[] = [];
      for (const f of feeds.slice(this.first, this.end)) {
        const out = session && prologue ? await host.run(session, this.feedsFor(prologue, new Map(), f), prologue.stateOutputs) : {};
        states.push(this.stateAfter(-1, out, new Map(), f));
      }
      return states;
    } finally {
      if (session) await host.release(session);
    }
  }

  async runBlock(b: number, input: readonly SampleState[] | StateSource, options: RunBlockOptions = {}): Promise<BlockResult> {
    const { plan, spec, samples, host } = this.ctx;
    const method = this.method;
    const cut = plan.blocks[b]!;
    const source = isStateSource(input) ? input : arraySource(input);
    const started = performance.now();
    const weights = await this.readWeights(cut.weights);
    const toPrune = cut.weights.filter((l) => this.ctx.targets.has(l.weight));
    let next: SampleState[] = [];
    let facts: PoolFacts = NO_POOL_FACTS;
    let compressed: Compressed[];

    if (method.calibration) {
      this.checkSource(cut, source);
      const dense = spec.propagation === "dense";
      const session = await this.loadSession(cut, weights, this.observedFor(cut, toPrune, method.calibration).tensors, this.statsGraphFor(b, toPrune, method.calibration));
      try {
        // Steps 1-3 (dense forward, token pools, statistics per linear) and the compress step of
        // 4-6, per group of accumulators that fits the budget; weights change only after all groups.
        const groups = accumulatorGroups(toPrune, method.calibration, this.ctx.accumulatorBudgetBytes ?? DEFAULT_ACCUMULATOR_BUDGET_BYTES);
        const done: CompressedLinear[] = [];
        for (let g = 0; g < groups.length; g++) {
          if (g > 0) await host.bind(session, boundTensors(cut, weights, this.ctx.index));
          const shares = this.sharesOf(groups[g]!);
          const compressing = shares ? this.ownShare(groups[g]!, shares) : undefined;
          const calibrated = await this.calibrate(b, session, weights, source, groups[g]!, method.calibration, g === 0 ? { ...options, propagate: dense, topic: "0", compressing } : { signal: options.signal, propagate: false, topic: String(g), compressing });
          if (g === 0) ({ facts, next } = calibrated);
          takeBack(weights, await host.unbind(session));
          done.push(...await (shares ? this.compressShared(b, String(g), groups[g]!, shares, compressing!, weights, calibrated.stats, options.signal) : this.compressLinears(groups[g]!, weights, calibrated.stats)));
        }
        done.sort((x, y) => toPrune.indexOf(x.linear) - toPrune.indexOf(y.linear));
        compressed = applyCompressions(done, this.maskBuffers);
        // Step 7: the pruned block's outputs feed the next block.
        if (!dense) {
          await host.bind(session, boundTensors(cut, weights, this.ctx.index));
          next = await this.propagate(b, session, weights, source, options);
        }
      } finally {
        takeBack(weights, await host.release(session));
      }
    } else {
      compressed = await this.compress(toPrune, weights, new Map());
    }

    const layers = compressed.map((c) => this.layerReport(b, c));
    const seconds = (performance.now() - started) / 1000;
    const tokens = samples.reduce((a, s) => a + s.tokens, 0);
    return {
      next,
      report: { index: b, label: cut.label, ...facts, seconds, tokensPerSecond: method.calibration ? tokens / seconds : 0 },
      layers,
      weights: toPrune.map((l) => ({ name: l.weight, bytes: weights.get(l.weight)!.bytes })),
    };
  }

  /**
   * A sparsity profile's pre-pass over block b: the dense forward with the profile's
   * accumulators, the block's facts from its dense weights, and the dense next states (the
   * pre-pass propagates densely). Nothing is compressed and no weight changes.
   */
  async prePassBlock(b: number, input: readonly SampleState[] | StateSource, prePass: ProfilePrePass, options: RunBlockOptions = {}): Promise<{ facts: number[]; next: SampleState[] }> {
    const { plan, samples, host } = this.ctx;
    const cut = plan.blocks[b]!;
    const source = isStateSource(input) ? input : arraySource(input);
    if (this.ctx.exchange) throw new GraphError(cut.label, "a profile pre-pass runs on one worker over every sample, not on a replica");
    this.checkSource(cut, source);
    const weights = await this.readWeights(cut.weights);
    const linears = cut.weights.filter((l) => this.ctx.targets.has(l.weight));
    const session = await this.loadSession(cut, weights, this.observedFor(cut, linears, prePass).tensors, this.statsGraphFor(b, linears, prePass));
    try {
      const { stats, next } = await this.calibrate(b, session, weights, source, linears, prePass, { ...options, propagate: true });
      takeBack(weights, await host.unbind(session));
      const facts = prePass.blockFacts({ block: b, linears, weights, stats, samples: samples.length });
      return { facts, next };
    } finally {
      takeBack(weights, await host.release(session));
      for (const w of weights.values()) this.release(w.bytes);
    }
  }

  /**
   * Steps 1-3 of DESIGN §2 for any method or profile pre-pass: the dense forward of every sample,
   * the token pools, and every linear's accumulator fed in sample order. Returns the
   * accumulators by weight name and, with `propagate`, the dense next states.
   */
  private async calibrate<A extends Accumulator>(
    b: number, session: SessionHandle, weights: Map<string, WeightMatrix>, source: StateSource,
    linears: readonly LinearInfo[], needs: CalibrationNeeds<A>, options: CalibrateOptions,
  ): Promise<{ stats: Map<string, A>; facts: PoolFacts; next: SampleState[] }> {
    const inGraph = this.statsGraphs.get(session);
    if (inGraph) return this.calibrateInGraph(b, session, weights, source, linears, needs, options, inGraph);
    const { plan, samples, host, spec, exchange } = this.ctx;
    const cut = plan.blocks[b]!;
    const { first, end } = this;
    const { onNext, signal } = options;
    // One accumulator per key (linears reading the same activation share one).
    const observed = this.observedFor(cut, linears, needs);
    const accs = new Map<string, { acc: A; activation: string; output?: string; attention: boolean }>();
    const stats = new Map<string, A>();
    for (const l of linears) {
      const accSpec = needs.accumulator(l);
      let entry = accs.get(accSpec.key);
      if (!entry) {
        accs.set(accSpec.key, (entry = { acc: accSpec.create(), activation: l.activation, output: observed.output.get(l.weight), attention: accSpec.needsAttention === true }));
      }
      stats.set(l.weight, entry.acc);
    }
    const acts = [...new Set([...accs.values()].map((e) => e.activation)), ...observed.tensors.map((o) => o.name)];
    const fetchActs = acts.filter((a) => !cut.stateInputs.includes(a));
    // Every accumulator's share of sample j, those that went to the solve threads side by side;
    // all of them are done before the next sample (each takes its samples in order).
    const feed = async (j: number, values: Record<string, WireTensor>, pool: Uint8Array) => {
      const subject = sampleSubject(samples[j]!, cut);
      await Promise.all([...accs.values()].map(async ({ acc, activation, output, attention }) => acc.add({
        index: j, input: values[activation]!, pool, subject, sample: samples[j]!,
        ...(output !== undefined ? { output: values[output]! } : {}),
        ...(attention ? { attention: values[observed.attention!]! } : {}),
        ...(this.ctx.solver ? { solver: this.ctx.solver } : {}),
      })));
    };
    // A replica keeps what each of its samples added, for the exchange.
    const records = new Map<number, Float64Array[]>();
    const exchangeable = exchange ? exchangeableAccumulators(cut.label, [...accs.values()].map((e) => e.acc)) : [];
    // The first replica of a chained reduction passes on its running sums, not its records.
    const needsRecords = exchange !== undefined && !(exchange.slice.replica === 0 && chained(exchangeable));
    if (needsRecords) for (const a of exchangeable) a.keepRecords?.();
    const keep = (j: number) => {
      if (needsRecords) records.set(j, exchangeable.map((a) => a.record(j)));
    };
    const rule = needs.pool;
    const observer = rule.kind === "afterForward" ? rule.start(samples) : undefined;
    // Activations kept between the two passes of an afterForward rule, when they fit.
    const cacheActs = observer !== undefined && this.activationBytes(linears) <= spec.activationCacheBytes;
    const withActs = rule.kind === "fixed" || cacheActs;
    const cached: (Record<string, WireTensor> | undefined)[] = [];
    const next: SampleState[] = [];

    for (let j = first; j < end; j++) {
      signal?.throwIfAborted();
      const state = await source.get(j);
      const inputs = this.feedsFor(cut, weights, this.ctx.feeds[j]!, state);
      const out = await host.run(session, inputs, withActs ? [...cut.stateOutputs, ...fetchActs] : cut.stateOutputs);
      const values = withActs ? Object.fromEntries(acts.map((a) => [a, out[a] ?? inputs[a]!])) : undefined;
      if (rule.kind === "fixed") {
        await feed(j, values!, rule.pool(samples[j]!));
        keep(j);
      } else {
        const x = plan.stateAfter[b]!.map((t) => state.get(t)!);
        const y = plan.stateAfter[b + 1]!.map((t) => out[t] ?? state.get(t)!);
        observer!.observe(j, { sample: samples[j]!, x, y, subject: sampleSubject(samples[j]!, cut) });
        if (cacheActs) cached[j] = values;
      }
      if (options.propagate) emitNext(next, j, this.stateAfter(b, out, state, this.ctx.feeds[j]!), onNext);
    }

    let facts = NO_POOL_FACTS;
    if (observer) {
      if (exchange) await this.gatherObservations(b, observer, signal);
      const selection = observer.select();
      facts = selection.facts;
      // The accumulators over the chosen pools, samples in order (recomputing activations if not kept).
      for (let j = first; j < end; j++) {
        signal?.throwIfAborted();
        let values = cached[j];
        if (!values) {
          const inputs = this.feedsFor(cut, weights, this.ctx.feeds[j]!, await source.get(j));
          const out = await host.run(session, inputs, fetchActs);
          values = Object.fromEntries(acts.map((a) => [a, out[a] ?? inputs[a]!]));
        }
        cached[j] = undefined;
        await feed(j, values, selection.pools[j]!);
        keep(j);
      }
    }
    if (exchange) await this.reduceRecords(b, exchangeable, records, options, stats);
    return { stats, facts, next };
  }

  /**
   * Every sample's record, from every replica, reduced in sample order: the one-process bits.
   * Where the replicas share out the compress step, only the accumulators of this replica's
   * linears are reduced (the others are never read here).
   */
  private async reduceRecords(
    b: number, accs: readonly ExchangeableAccumulator[], own: ReadonlyMap<number, Float64Array[]>, options: CalibrateOptions, stats: ReadonlyMap<string, Accumulator>,
  ): Promise<void> {
    const label = this.ctx.plan.blocks[b]!.label;
    const needed = options.compressing ? new Set<Accumulator>(options.compressing.map((l) => stats.get(l.weight)!)) : undefined;
    if (chained(accs)) return this.sumInChain(b, accs as SummingAccumulator[], own, options, needed);
    const all = await this.ctx.exchange!.allGather(b, `stats-${options.topic ?? "0"}`, own, options.signal);
    accs.forEach((acc, i) => {
      if (!needed || needed.has(acc)) acc.reduce(all.map((r, j) => recordPart(r, i, label, j)));
    });
  }

  /**
   * The reduction of sums (Hessians) down the replicas in sample order: replica r continues
   * replica r - 1's sum with its own samples' records and posts the result (topic sum-<group>),
   * so the last replica's is every sample's, which the others fetch. Each replica moves one sum
   * each way instead of every other replica's per-sample records, the same additions in the same
   * order as one process.
   */
  private async sumInChain(b: number, accs: readonly SummingAccumulator[], own: ReadonlyMap<number, Float64Array[]>, options: CalibrateOptions, needed: Set<Accumulator> | undefined): Promise<void> {
    const label = this.ctx.plan.blocks[b]!.label;
    const exchange = this.ctx.exchange!;
    const { replica, replicas } = exchange.slice;
    const topic = `sum-${options.topic ?? "0"}`;
    // Replica 0's own running sums are already its samples' from zero, in order.
    if (replica > 0) {
      const prefix = await exchange.fetch(b, topic, replica - 1, accs.length, options.signal);
      const mine = [...own.keys()].sort((x, y) => x - y);
      accs.forEach((acc, i) => acc.continueSum(recordPart(prefix, i, label, replica - 1), mine.map((j) => recordPart(own.get(j), i, label, j))));
    }
    await exchange.post(b, topic, accs.map((a) => a.sum()), options.signal);
    if (replica === replicas - 1) return;
    const total = await exchange.fetch(b, topic, replicas - 1, accs.length, options.signal);
    accs.forEach((acc, i) => {
      if (!needed || needed.has(acc)) acc.continueSum(recordPart(total, i, label, replicas - 1), []);
    });
  }

  /** A replica's pool observer gets the other replicas' observations before it selects. */
  private async gatherObservations(b: number, observer: PoolObserver, signal: AbortSignal | undefined): Promise<void> {
    const cut = this.ctx.plan.blocks[b]!;
    if (!observer.record || !observer.accept) throw new GraphError(cut.label, "the method's token-pool rule cannot be shared between replicas; run it with one replica per stage");
    const own = new Map<number, Float64Array[]>();
    for (let j = this.first; j < this.end; j++) own.set(j, [observer.record(j)]);
    const all = await this.ctx.exchange!.allGather(b, "pool", own, signal);
    all.forEach((r, j) => {
      if (j < this.first || j >= this.end) observer.accept!(j, recordPart(r, 0, cut.label, j));
    });
  }

  private checkSource(cut: StageCut, source: StateSource): void {
    const first = source.first ?? 0;
    if (source.count !== this.end - this.first || first !== this.first) {
      throw new GraphError(cut.label, `got input states for samples ${first}..${first + source.count - 1}, expected ${this.first}..${this.end - 1}`);
    }
  }

  /** calibrate() with --stats graph: the session's graph computes the statistics (graphStatsPass.ts). */
  private async calibrateInGraph<A extends Accumulator>(
    b: number, session: SessionHandle, weights: Map<string, WeightMatrix>, source: StateSource,
    linears: readonly LinearInfo[], needs: CalibrationNeeds<A>, options: CalibrateOptions, graph: StatsGraph,
  ): Promise<{ stats: Map<string, A>; facts: PoolFacts; next: SampleState[] }> {
    const { plan, samples, host, feeds, exchange } = this.ctx;
    const cut = plan.blocks[b]!;
    const next: SampleState[] = [];
    // A replica keeps each of its samples' sums (the accumulators' records) for the exchange.
    const records = new Map<number, Float64Array[]>();
    let accs: ExchangeableAccumulator[] = [];
    const replica = exchange ? {
      first: this.first, end: this.end,
      observed: (observer: PoolObserver) => this.gatherObservations(b, observer, options.signal),
      fed: (j: number, fed: readonly Accumulator[]) => {
        if (accs.length === 0) accs = exchangeableAccumulators(cut.label, fed);
        records.set(j, accs.map((a) => a.record(j)));
      },
    } : {};
    const { stats, facts } = await statsInGraph({
      samples, graph, signal: options.signal, ...replica,
      subject: (j) => sampleSubject(samples[j]!, cut),
      run: async (j, pool, fetches) => {
        const state = await source.get(j);
        const inputs = this.feedsFor(cut, weights, feeds[j]!, state);
        inputs[STATS_POOL_INPUT] = pool ? { type: "float32", dims: [pool.length], data: Float32Array.from(pool) } : NO_POOL;
        return { state, out: await host.run(session, inputs, fetches) };
      },
      stateOutputs: options.propagate ? cut.stateOutputs : [],
      ...(options.propagate ? { emit: (j: number, state: SampleState, out: Record<string, WireTensor>) => emitNext(next, j, this.stateAfter(b, out, state, feeds[j]!), options.onNext) } : {}),
    }, linears, needs);
    if (exchange) await this.reduceRecords(b, accs, records, options, stats);
    return { stats, facts, next };
  }

  /**
   * The statistics outputs of block b's graph with --stats graph (undefined: host statistics):
   * each activation's pooled sums of squares, and for a pool chosen after the forward (ATV)
   * the block's per-token cosine distances.
   */
  private statsGraphFor(b: number, linears: readonly LinearInfo[], needs: CalibrationNeeds): StatsGraph | undefined {
    if (this.ctx.spec.stats !== "graph") return undefined;
    const { stateAfter } = this.ctx.plan;
    const channels = new Map(linears.map((l) => [l.activation, l.inDim]));
    return planStatsGraph(
      [...channels].map(([name, n]) => ({ name, channels: n })),
      needs.pool.kind === "afterForward" ? { x: stateAfter[b]!, y: stateAfter[b + 1]! } : undefined,
    );
  }

  /** Steps 4-6: every linear of the block is compressed from dense weights before any changes. */
  private async compress(linears: readonly LinearInfo[], weights: Map<string, WeightMatrix>, stats: ReadonlyMap<string, Accumulator>): Promise<Compressed[]> {
    return applyCompressions(await this.compressLinears(linears, weights, stats), this.maskBuffers);
  }

  /**
   * How the replicas of this stage share out the compress step of `linears` (undefined: no
   * replicas, or fewer linears than replicas, and this run compresses them all).
   */
  private sharesOf(linears: readonly LinearInfo[]): CompressShares | undefined {
    const replicas = this.ctx.exchange?.slice.replicas ?? 1;
    return compressShares(linears.map((l) => linearCompressCost(this.method, l)), replicas);
  }

  /** The linears this replica compresses under `shares`. */
  private ownShare(linears: readonly LinearInfo[], shares: CompressShares): LinearInfo[] {
    const r = this.ctx.exchange!.slice.replica;
    return shares.order.slice(shares.bounds[r]!, shares.bounds[r + 1]!).map((i) => linears[i]!);
  }

  /**
   * The compress step of `linears` split between the replicas: this replica compresses its share
   * (`own`, from ownShare), and gets the others' results from the exchange (topic compress-<group>).
   */
  private async compressShared(
    b: number, group: string, linears: readonly LinearInfo[], shares: CompressShares, own: readonly LinearInfo[], weights: Map<string, WeightMatrix>,
    stats: ReadonlyMap<string, Accumulator>, signal: AbortSignal | undefined,
  ): Promise<CompressedLinear[]> {
    const first = shares.bounds[this.ctx.exchange!.slice.replica]!;
    const mine = await this.compressLinears(own, weights, stats);
    const records = new Map(mine.map((c, i) => [first + i, compressionRecord(c.result)]));
    const all = await this.ctx.exchange!.allGather(b, `compress-${group}`, records, signal, shares);
    return shares.order.map((li, item) => {
      if (item >= first && item < first + mine.length) return mine[item - first]!;
      const linear = linears[li]!;
      const weight = weights.get(linear.weight)!;
      const elementBytes = weight.bytes.length / (linear.inDim * linear.outDim);
      const result = compressionFromRecord(all[item]!, linear, elementBytes, (n) => this.maskBuffers.take(n));
      return { linear, weight, target: this.targetOf(linear), result };
    });
  }

  /** The compress step of every linear, from the dense weights; nothing is applied yet. */
  private async compressLinears(linears: readonly LinearInfo[], weights: Map<string, WeightMatrix>, stats: ReadonlyMap<string, Accumulator>): Promise<CompressedLinear[]> {
    const { spec, samples } = this.ctx;
    return Promise.all(linears.map(async (linear) => {
      const weight = weights.get(linear.weight)!;
      const target = { sparsity: this.targetOf(linear), pattern: spec.pattern };
      return { linear, weight, target: target.sparsity, result: await this.method.compress({ weight, linear, stats: stats.get(linear.weight), samples: samples.length, target, masks: lending(this.maskBuffers.selector(this.ctx.maskPool ?? INLINE_MASKS)), solver: this.ctx.solver ?? INLINE_SOLVER }) };
    }));
  }

  /** Step 7: the block with its compressed weights, on every sample, in order. */
  private async propagate(b: number, session: SessionHandle, weights: Map<string, WeightMatrix>, source: StateSource, { onNext, signal }: RunBlockOptions): Promise<SampleState[]> {
    const cut = this.ctx.plan.blocks[b]!;
    const next: SampleState[] = [];
    for (let j = this.first; j < this.end; j++) {
      signal?.throwIfAborted();
      const state = await source.get(j);
      const inputs = this.feedsFor(cut, weights, this.ctx.feeds[j]!, state);
      if (this.statsGraphs.has(session)) inputs[STATS_POOL_INPUT] = NO_POOL;
      const out = await this.ctx.host.run(session, inputs, cut.stateOutputs);
      emitNext(next, j, this.stateAfter(b, out, state, this.ctx.feeds[j]!), onNext);
    }
    return next;
  }

  private targetOf(linear: LinearInfo): number {
    return this.ctx.targets.get(linear.weight)!;
  }

  private layerReport(block: number, c: Compressed): LayerReport {
    const l = c.linear;
    const params = l.inDim * l.outDim;
    return {
      weight: l.weight, node: l.node, block, shape: [l.inDim, l.outDim], dataType: typeName(c.dataType),
      targetSparsity: c.target, sparsity: c.pruned / params, pruned: c.pruned, params,
      ...(c.facts ? { facts: c.facts } : {}),
    };
  }

  private activationBytes(linears: readonly LinearInfo[]): number {
    const seen = new Map<string, number>();
    for (const l of linears) seen.set(l.activation, l.inDim);
    const perToken = [...seen.values()].reduce((a, b) => a + b, 0) * 4;
    return this.ctx.samples.slice(this.first, this.end).reduce((a, s) => a + s.tokens, 0) * perToken;
  }

  private async readWeights(linears: readonly LinearInfo[]): Promise<Map<string, WeightMatrix>> {
    const { data, index } = this.ctx;
    const out = new Map<string, WeightMatrix>();
    for (const l of linears) {
      const t = index.initializers.get(l.weight)!;
      // In a mask thread's memory where the pool has threads (it selects them in place there).
      const size = data.byteLength(t);
      const bytes = this.ctx.maskPool?.weightBuffer(size) ?? new Uint8Array(this.pool.acquire(size));
      await data.readRange(t, 0, bytes);
      out.set(l.weight, { name: l.weight, dataType: l.dataType, layout: l.layout, inDim: l.inDim, outDim: l.outDim, bytes });
    }
    return out;
  }

  private async loadSession(cut: StageCut, weights: Map<string, WeightMatrix>, observed: readonly ObservedTensor[] = [], stats?: StatsGraph): Promise<SessionHandle> {
    const { loaded, data, index, host, floatType } = this.ctx;
    const initializerBytes = new Map<string, Uint8Array>();
    for (const name of cut.initializers) initializerBytes.set(name, await data.read(index.initializers.get(name)!));
    const model = buildCutModel({ source: loaded.model, index, cut, initializerBytes, floatType, observed });
    if (stats) addStatsOutputs(model, stats, cut.label);
    const session = await host.load(cut.label, toBinary(ModelProtoSchema, model), boundTensors(cut, weights, index));
    if (stats) this.statsGraphs.set(session, stats);
    return session;
  }

  private feedsFor(cut: StageCut, _weights: Map<string, WeightMatrix>, feeds: SampleFeeds, state?: SampleState): Record<string, WireTensor> {
    const inputs: Record<string, WireTensor> = {};
    for (const name of cut.sideInputs) inputs[name] = feeds.get(name);
    for (const name of cut.stateInputs) {
      const t = state?.get(name);
      if (!t) throw new GraphError(cut.label, `state tensor ${name} is missing`);
      inputs[name] = t;
    }
    return inputs;
  }

  /**
   * The inner tensors the accumulators of `linears` read (their outputs, the attention
   * probabilities), by weight name, and the list the block's session must expose.
   */
  private observedFor(cut: StageCut, linears: readonly LinearInfo[], needs: CalibrationNeeds | undefined): Observed {
    const { index, floatType } = this.ctx;
    const output = new Map<string, string>();
    const tensors: ObservedTensor[] = [];
    let attention: string | undefined;
    for (const l of needs ? linears : []) {
      const s = needs!.accumulator(l);
      if (s.needsOutput) {
        const o = linearOutput(index, l, floatType);
        output.set(l.weight, o.name);
        tensors.push(o);
      }
      if (s.needsAttention && attention === undefined) {
        const a = attentionProbs(index, cut, floatType, l.node);
        attention = a.name;
        tensors.push(a);
      }
    }
    return { output, attention, tensors };
  }

  /** The state after stage `stage` (-1 = prologue): new outputs, else carried over, else graph input. */
  private stateAfter(stage: number, out: Record<string, WireTensor>, previous: SampleState, feeds: SampleFeeds): SampleState {
    const next: SampleState = new Map();
    for (const t of this.ctx.plan.stateAfter[stage + 1]!) {
      const value = out[t] ?? previous.get(t) ?? (this.ctx.index.inputs.has(t) ? feeds.get(t) : undefined);
      if (!value) throw new GraphError(t, `boundary tensor after stage ${stage} was not produced`);
      next.set(t, value);
    }
    return next;
  }
}

/** Whether replicas reduce these accumulators in a chain (BlockEngine.sumInChain): all of them are sums. */
function chained(accs: readonly ExchangeableAccumulator[]): boolean {
  return accs.length > 0 && accs.every(isSumming);
}

/** The accumulators a replica exchanges, in a fixed order (the block's linears'). */
function exchangeableAccumulators(label: string, accs: readonly Accumulator[]): ExchangeableAccumulator[] {
  return accs.map((a) => {
    if (!isExchangeable(a)) throw new GraphError(label, "the method's statistics cannot be reduced across replicas; run it with one replica per stage");
    return a;
  });
}

function recordPart(record: readonly Float64Array[] | undefined, i: number, label: string, j: number): Float64Array {
  const part = record?.[i];
  if (!part) throw new GraphError(label, `the exchange gave no record part ${i} for sample ${j}`);
  return part;
}

interface CalibrateOptions extends RunBlockOptions {
  propagate: boolean;
  /** the exchange topic of the group's statistics */
  topic?: string;
  /** the linears this replica compresses, when the replicas share the compress step out */
  compressing?: readonly LinearInfo[];
}

interface CompressedLinear {
  linear: LinearInfo;
  weight: WeightMatrix;
  target: number;
  result: Compression;
}

/** Masks zero their entries, new weights replace the old: only once every linear of the block was compressed. */
/** Applies every compression; the masks, read for the last time, go back to `masks` for the next block. */
function applyCompressions(done: readonly CompressedLinear[], masks: MaskBuffers): Compressed[] {
  for (const { weight, result } of done) {
    if (result.kind === "mask") {
      applyMask(weight, result.mask);
      masks.give(result.mask);
    } else replaceWeight(weight, result.bytes);
  }
  return done.map(({ linear, weight, target, result }) => ({ linear, dataType: weight.dataType, target, pruned: result.pruned, facts: result.facts }));
}

/**
 * The block's linears in groups whose accumulators (by key, first appearance first) fit `budget`
 * bytes together; a key larger than the budget is a group of its own. One group when all fit.
 */
export function accumulatorGroups(linears: readonly LinearInfo[], needs: CalibrationNeeds, budget: number): LinearInfo[][] {
  const byKey = new Map<string, { bytes: number; linears: LinearInfo[] }>();
  for (const l of linears) {
    const spec = needs.accumulator(l);
    const entry = byKey.get(spec.key) ?? { bytes: spec.bytes ?? 0, linears: [] };
    entry.linears.push(l);
    byKey.set(spec.key, entry);
  }
  const groups: LinearInfo[][] = [];
  let current: LinearInfo[] = [];
  let used = 0;
  for (const { bytes, linears: ls } of byKey.values()) {
    if (current.length > 0 && used + bytes > budget) {
      groups.push(current);
      current = [];
      used = 0;
    }
    current.push(...ls);
    used += bytes;
  }
  if (current.length > 0) groups.push(current);
  return groups.length > 0 ? groups : [[]];
}

/** Masks on the calling thread: a one-thread pool starts nothing and needs no close. */
const INLINE_MASKS = MaskPool.start(1);

/**
 * Jobs whose weights the pool may move to its threads while it selects their masks (MaskJob.lend):
 * the engine's weights are read into buffers of their own, and nothing reads a linear's weight
 * until its mask is back.
 */
function lending(inner: MaskSelector): MaskSelector {
  return { computeMasks: (jobs) => inner.computeMasks(jobs.map((j) => ({ ...j, lend: true }))) };
}

function isStateSource(input: readonly SampleState[] | StateSource): input is StateSource {
  return !Array.isArray(input);
}

function emitNext(next: SampleState[], sample: number, state: SampleState, onNext: RunBlockOptions["onNext"]): void {
  next.push(state);
  onNext?.(sample, state);
}

function sampleSubject(s: CalibSample, cut: StageCut): string {
  return `${cut.label}, sample ${s.index} (line ${s.line})`;
}

/** The block's weights as tensors to bind (their buffers move to the inference thread). */
function boundTensors(cut: StageCut, weights: Map<string, WeightMatrix>, index: GraphIndex): Record<string, WireTensor> {
  const bound: Record<string, WireTensor> = {};
  for (const l of cut.weights) {
    const w = weights.get(l.weight)!;
    bound[l.weight] = { type: ortType(w.dataType, l.weight), dims: index.initializers.get(l.weight)!.dims.map(Number), data: typedView(w) };
  }
  return bound;
}

/**
 * Points each weight at the buffer the inference thread gave back. A weight in shared memory
 * never left: its own view stays (the mask pool knows its buffers by their views).
 */
function takeBack(weights: Map<string, WeightMatrix>, returned: Record<string, WireTensor>): void {
  for (const [name, t] of Object.entries(returned)) {
    const w = weights.get(name);
    if (w && !(w.bytes.buffer instanceof SharedArrayBuffer)) w.bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  }
}

/** A method's new weight bytes (same type and layout) replace the dense ones in place. */
function replaceWeight(w: WeightMatrix, bytes: Uint8Array): void {
  if (bytes.byteLength !== w.bytes.byteLength) {
    throw new GraphError(w.name, `the method returned ${bytes.byteLength} bytes for a weight of ${w.bytes.byteLength}`);
  }
  w.bytes.set(bytes);
}

function typedView(w: WeightMatrix): TypedData {
  const b = w.bytes;
  const n = w.inDim * w.outDim;
  if (b.byteLength === n * 4) return new Float32Array(b.buffer, b.byteOffset, n);
  return new Uint16Array(b.buffer, b.byteOffset, n);
}
