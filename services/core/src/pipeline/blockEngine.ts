/**
 * DESIGN.md §2 steps 1-7 for one block: dense forward, ATV token choice, activation statistics,
 * masks for every linear of the block, zeroing, and the forward that feeds the next block. The
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
import { ortType, typeName } from "../onnx/dtype.js";
import type { LoadedModel } from "../onnx/modelFile.js";
import type { TensorData } from "../onnx/tensorData.js";
import { ChannelStats } from "../prune/activationStats.js";
import { cosineDistances } from "../prune/hiddenState.js";
import { applyMask, type WeightMatrix } from "../prune/maskSelect.js";
import { MaskPool, type MaskJob } from "../prune/maskPool.js";
import { attendedPool, selectAtvPools } from "../prune/poolSelect.js";
import { BufferPool } from "../runtime/bufferPool.js";
import type { InferenceHost, SessionHandle } from "../runtime/inferenceHost.js";
import type { TensorData as TypedData, WireTensor } from "../runtime/wireTensor.js";
import type { BlockReport, LayerReport } from "./report.js";
import { isSelected, type ResolvedSpec } from "./pruneSpec.js";
import type { SampleFeeds } from "./sampleFeeds.js";

/** The hidden-path tensors of one sample at a block boundary. */
export type SampleState = Map<string, WireTensor>;

/** The states entering a block, possibly still arriving; get(j) may be called more than once. */
export interface StateSource {
  readonly count: number;
  get(sample: number): Promise<SampleState>;
}

/** A StateSource over states already in memory. */
export function arraySource(states: readonly SampleState[]): StateSource {
  return {
    count: states.length,
    get: (j) => {
      const s = states[j];
      return s ? Promise.resolve(s) : Promise.reject(new RangeError(`no state for sample ${j} (have ${states.length})`));
    },
  };
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
  /** threads for mask selection (started and closed by the caller); default: this thread only */
  maskPool?: MaskPool;
}

export interface PrunedWeight {
  name: string;
  bytes: Uint8Array;
}

export interface BlockResult {
  /** state after this block for every sample (empty for magnitude, which needs no forward) */
  next: SampleState[];
  report: BlockReport;
  layers: LayerReport[];
  /** the pruned weights, to be written out */
  weights: PrunedWeight[];
}

export class BlockEngine {
  private readonly pool = new BufferPool();

  constructor(private readonly ctx: EngineContext) {}

  /** Gives a finished block's weight buffers back for the next block (after they are written). */
  recycle(weights: readonly PrunedWeight[]): void {
    for (const w of weights) this.pool.release(w.bytes.buffer as ArrayBuffer);
  }

  /** State entering block 0: the prologue's outputs (embedding lookup), or the main input itself. */
  async initialStates(): Promise<SampleState[]> {
    const { plan, host, feeds } = this.ctx;
    const prologue = plan.prologue;
    const session = prologue ? await this.loadSession(prologue, new Map()) : undefined;
    try {
      const states: SampleState[] = [];
      for (const f of feeds) {
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
    const cut = plan.blocks[b]!;
    const source = isStateSource(input) ? input : arraySource(input);
    const { onNext, signal } = options;
    const started = performance.now();
    const weights = await this.readWeights(cut.weights);
    const toPrune = cut.weights.filter((l) => isSelected(spec, l.weight, l.node));
    const N = samples.length;
    if (spec.method !== "magnitude" && source.count !== N) {
      throw new GraphError(cut.label, `got input states for ${source.count} samples, expected ${N}`);
    }
    let next: SampleState[] = [];
    let report: Omit<BlockReport, "seconds" | "tokensPerSecond"> = {
      index: b, label: cut.label, cosDistAvg: null, k: [], nText: [], nVisual: [],
    };
    let scales = new Map<string, Float64Array>();

    if (spec.method !== "magnitude") {
      const session = await this.loadSession(cut, weights);
      try {
        const stats = new Map<string, ChannelStats>();
        for (const l of toPrune) if (!stats.has(l.activation)) stats.set(l.activation, new ChannelStats(l.activation, l.inDim));
        const acts = [...stats.keys()];
        const fetchActs = acts.filter((a) => !cut.stateInputs.includes(a));
        const cacheActs = spec.method === "atv" && this.activationBytes(toPrune) <= spec.activationCacheBytes;
        const cached: Record<string, WireTensor>[] = [];
        const distances: Float64Array[] = [];
        const dense = spec.propagation === "dense";

        // Step 1 (and 3 for Wanda, whose pool needs nothing from the forward): dense forward.
        for (let j = 0; j < N; j++) {
          signal?.throwIfAborted();
          const state = await source.get(j);
          const inputs = this.feedsFor(cut, weights, this.ctx.feeds[j]!, state);
          const withActs = spec.method === "wanda" || cacheActs;
          const out = await host.run(session, inputs, withActs ? [...cut.stateOutputs, ...fetchActs] : cut.stateOutputs);
          const act = (a: string) => out[a] ?? inputs[a]!;
          if (spec.method === "wanda") {
            const pool = attendedPool(samples[j]!);
            for (const a of acts) stats.get(a)!.add(act(a), pool, sampleSubject(samples[j]!, cut));
          } else {
            // Step 2: d_t = 1 - cos(X[t], Y[t]) for the visual tokens.
            const s = samples[j]!;
            const visual = s.attentionMask.map((m, t) => (m && s.imageMask[t] ? 1 : 0));
            const x = plan.stateAfter[b]!.map((t) => state.get(t)!);
            const y = plan.stateAfter[b + 1]!.map((t) => out[t] ?? state.get(t)!);
            distances.push(cosineDistances(x, y, s.tokens, visual, sampleSubject(s, cut)));
            if (cacheActs) cached.push(Object.fromEntries(acts.map((a) => [a, act(a)])));
          }
          if (dense) emitNext(next, this.stateAfter(b, out, state, this.ctx.feeds[j]!), onNext);
        }

        if (spec.method === "atv") {
          const selection = selectAtvPools(samples, distances, spec.alpha);
          report = { ...report, cosDistAvg: selection.cosDistAvg, k: selection.k, nText: selection.nText, nVisual: selection.nVisual };
          // Step 3 over the ATV pools, samples in order (recomputing activations if not kept).
          for (let j = 0; j < N; j++) {
            signal?.throwIfAborted();
            let values = cached[j];
            if (!values) {
              const inputs = this.feedsFor(cut, weights, this.ctx.feeds[j]!, await source.get(j));
              const out = await host.run(session, inputs, fetchActs);
              values = Object.fromEntries(acts.map((a) => [a, out[a] ?? inputs[a]!]));
            }
            cached[j] = undefined as never;
            for (const a of acts) stats.get(a)!.add(values[a]!, selection.pools[j]!, sampleSubject(samples[j]!, cut));
          }
        }
        scales = new Map([...stats].map(([a, s]) => [a, s.mean(N)]));
        takeBack(weights, await host.unbind(session));
        await this.maskBlock(toPrune, weights, scales);

        // Step 7: the pruned block's outputs feed the next block.
        if (!dense) {
          await host.bind(session, boundTensors(cut, weights, this.ctx.index));
          next = [];
          for (let j = 0; j < N; j++) {
            signal?.throwIfAborted();
            const state = await source.get(j);
            const inputs = this.feedsFor(cut, weights, this.ctx.feeds[j]!, state);
            const out = await host.run(session, inputs, cut.stateOutputs);
            emitNext(next, this.stateAfter(b, out, state, this.ctx.feeds[j]!), onNext);
          }
        }
      } finally {
        takeBack(weights, await host.release(session));
      }
    } else {
      await this.maskBlock(toPrune, weights, scales);
    }

    const layers = toPrune.map((l) => this.layerReport(b, l, weights.get(l.weight)!));
    const seconds = (performance.now() - started) / 1000;
    const tokens = samples.reduce((a, s) => a + s.tokens, 0);
    return {
      next,
      report: { ...report, seconds, tokensPerSecond: spec.method === "magnitude" ? 0 : tokens / seconds },
      layers,
      weights: toPrune.map((l) => ({ name: l.weight, bytes: weights.get(l.weight)!.bytes })),
    };
  }

  private readonly pruneCounts = new Map<string, number>();

  /** Steps 4-6: every mask of the block is computed before any weight is zeroed. */
  private async maskBlock(toPrune: readonly LinearInfo[], weights: Map<string, WeightMatrix>, scales: Map<string, Float64Array>): Promise<void> {
    const { spec } = this.ctx;
    const batch: MaskJob[] = toPrune.map((l) => ({
      weight: weights.get(l.weight)!,
      scale: spec.method === "magnitude" ? null : scales.get(l.activation)!,
      options: { sparsity: spec.sparsity, pattern: spec.pattern, scope: spec.method === "magnitude" ? spec.magnitudeScope : "column" },
    }));
    const results = await (this.ctx.maskPool ?? INLINE_MASKS).computeMasks(batch);
    batch.forEach(({ weight: w }, i) => {
      applyMask(w, results[i]!.mask);
      this.pruneCounts.set(w.name, results[i]!.pruned);
    });
  }

  private layerReport(block: number, l: LinearInfo, w: WeightMatrix): LayerReport {
    const params = l.inDim * l.outDim;
    const pruned = this.pruneCounts.get(l.weight) ?? 0;
    return {
      weight: l.weight, node: l.node, block, shape: [l.inDim, l.outDim], dataType: typeName(w.dataType),
      targetSparsity: this.ctx.spec.sparsity, sparsity: pruned / params, pruned, params,
    };
  }

  private activationBytes(linears: readonly LinearInfo[]): number {
    const seen = new Map<string, number>();
    for (const l of linears) seen.set(l.activation, l.inDim);
    const perToken = [...seen.values()].reduce((a, b) => a + b, 0) * 4;
    return this.ctx.samples.reduce((a, s) => a + s.tokens, 0) * perToken;
  }

  private async readWeights(linears: readonly LinearInfo[]): Promise<Map<string, WeightMatrix>> {
    const { data, index } = this.ctx;
    const out = new Map<string, WeightMatrix>();
    for (const l of linears) {
      const t = index.initializers.get(l.weight)!;
      const bytes = new Uint8Array(this.pool.acquire(data.byteLength(t)));
      await data.readRange(t, 0, bytes);
      out.set(l.weight, { name: l.weight, dataType: l.dataType, layout: l.layout, inDim: l.inDim, outDim: l.outDim, bytes });
    }
    return out;
  }

  private async loadSession(cut: StageCut, weights: Map<string, WeightMatrix>): Promise<SessionHandle> {
    const { loaded, data, index, host, floatType } = this.ctx;
    const initializerBytes = new Map<string, Uint8Array>();
    for (const name of cut.initializers) initializerBytes.set(name, await data.read(index.initializers.get(name)!));
    const model = buildCutModel({ source: loaded.model, index, cut, initializerBytes, floatType });
    return host.load(cut.label, toBinary(ModelProtoSchema, model), boundTensors(cut, weights, index));
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

/** Masks on the calling thread: a one-thread pool starts nothing and needs no close. */
const INLINE_MASKS = MaskPool.start(1);

function isStateSource(input: readonly SampleState[] | StateSource): input is StateSource {
  return !Array.isArray(input);
}

function emitNext(next: SampleState[], state: SampleState, onNext: RunBlockOptions["onNext"]): void {
  next.push(state);
  onNext?.(next.length - 1, state);
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

/** Points each weight at the buffer the inference thread gave back. */
function takeBack(weights: Map<string, WeightMatrix>, returned: Record<string, WireTensor>): void {
  for (const [name, t] of Object.entries(returned)) {
    const w = weights.get(name);
    if (w) w.bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  }
}

function typedView(w: WeightMatrix): TypedData {
  const b = w.bytes;
  const n = w.inDim * w.outDim;
  if (b.byteLength === n * 4) return new Float32Array(b.buffer, b.byteOffset, n);
  return new Uint16Array(b.buffer, b.byteOffset, n);
}
