/**
 * The seam between the block pipeline and a pruning method (DESIGN.md §2, "a method is a
 * plug-in"), after llm-compressor's modifiers: a method says what it needs from a block's dense
 * forward (which tokens count, what each linear accumulates: `calibrate_module`) and how a linear
 * is compressed from what it accumulated (`compress_modules`). The BlockEngine runs the forward,
 * feeds the accumulators in sample order, calls compress for every linear of the block before
 * any weight changes, and propagates; it never asks which method it runs.
 */
import type { MaskJob } from "../prune/maskPool.js";
import type { Solver } from "../prune/solvePool.js";
import type { CalibSample } from "../calib/calibSet.js";
import type { LinearInfo } from "../graph/linears.js";
import type { MaskResult, Pattern, WeightMatrix } from "../prune/maskSelect.js";
import type { WireTensor } from "../runtime/wireTensor.js";

// ---------------------------------------------------------------------------------------------
// Which tokens count

/** Facts a token-pool rule reports per block (report.json's blocks[]); ATV's k_j and counts. */
export interface PoolFacts {
  /** ATV: mean cosine distance of visual tokens (0 when none); null for rules that measure none */
  cosDistAvg: number | null;
  k: number[];
  nText: number[];
  nVisual: number[];
}

export const NO_POOL_FACTS: PoolFacts = { cosDistAvg: null, k: [], nText: [], nVisual: [] };

/** What the dense forward of sample j showed: the block's input and output hidden-state parts. */
export interface ForwardObservation {
  sample: CalibSample;
  /** boundary tensors before the block (one, or a (residual, delta) pair); empty with --stats graph */
  x: readonly WireTensor[];
  /** boundary tensors after the block, from the dense forward; empty with --stats graph */
  y: readonly WireTensor[];
  /** --stats graph: d_t = 1 - cos(X[t], Y[t]) for every token, computed inside the block's graph */
  distances?: Float64Array;
  subject: string;
}

/** Chooses the pools of one block once every sample's dense forward was observed (in order). */
export interface PoolObserver {
  observe(j: number, seen: ForwardObservation): void;
  select(): { pools: Uint8Array[]; facts: PoolFacts };
  /**
   * What observe(j) recorded, and its counterpart that takes a record made by another replica:
   * both present when replicas of a stage can share the observations (data-parallel calibration).
   */
  record?(j: number): Float64Array;
  accept?(j: number, record: Float64Array): void;
}

/**
 * `fixed`: a sample's pool is known before the forward (all attended tokens), so the
 * accumulators are fed during the dense forward itself. `afterForward`: the pool depends on the
 * dense forward of every sample (ATV's cosDistAvg), so the accumulators are fed in a second pass
 * over the same dense activations (kept in memory when they fit, else recomputed).
 */
export type PoolRule =
  | { kind: "fixed"; pool(sample: CalibSample): Uint8Array }
  | { kind: "afterForward"; start(samples: readonly CalibSample[]): PoolObserver };

// ---------------------------------------------------------------------------------------------
// What a linear accumulates

/** One sample's contribution to a linear's statistics. */
export interface AccumulatorInput {
  /** sample index, 0..N-1; add is called in this order */
  index: number;
  /** the linear's input activation `[.., T, in]` from the block's dense forward */
  input: WireTensor;
  /** the linear's output `[.., T, out]`, present only when the spec asked for it */
  output?: WireTensor;
  /** the block's attention probabilities `[1, H, T, T]`, present only when the spec asked for them */
  attention?: WireTensor;
  /** the calibration sample (its attention and image masks) */
  sample?: CalibSample;
  /** 1 for the tokens that count (the rule's pool of this sample) */
  pool: Uint8Array;
  /** names the block, sample and JSONL line in errors */
  subject: string;
  /** the job's solve threads, where it has them (SparseGPT's Hessians add row ranges there) */
  solver?: Solver;
}

export interface Accumulator {
  /** a promise where the work went to other threads: the engine awaits it before the next sample */
  add(sample: AccumulatorInput): void | Promise<void>;
}

/**
 * An accumulator whose state is a sum of per-sample records, added in sample order: replicas
 * that each fed a share of the samples exchange the records and reduce them to the bits one
 * process gets (pipeline/sampleExchange.ts).
 */
export interface ExchangeableAccumulator extends Accumulator {
  /**
   * called before the first add() where record() will be asked for: an accumulator may keep
   * less without it (a Hessian forms each sample's matrix a chunk of rows at a time)
   */
  keepRecords?(): void;
  /** what add() contributed for sample j, which must be the sample added last */
  record(j: number): Float64Array;
  /** replaces the state by every sample's record (index = sample), added in sample order */
  reduce(records: readonly Float64Array[]): void;
}

/**
 * An exchangeable accumulator whose state is a plain sum of its samples' records, added in
 * sample order from zero (SparseGPT's Hessians). Replicas can then reduce it in a chain: each
 * continues the sum of the replicas before it with its own samples and passes one record on,
 * instead of every replica gathering every sample's record (pipeline/blockEngine.ts).
 */
export interface SummingAccumulator extends ExchangeableAccumulator {
  /** the state as one record: the sum of the samples added or continued so far */
  sum(): Float64Array;
  /** replaces the state by `prefix` (another replica's sum()) with `records` added to it in order */
  continueSum(prefix: Float64Array, records: readonly Float64Array[]): void;
}

export function isSumming(acc: Accumulator): acc is SummingAccumulator {
  return isExchangeable(acc) && typeof (acc as Partial<SummingAccumulator>).sum === "function" && typeof (acc as Partial<SummingAccumulator>).continueSum === "function";
}

export function isExchangeable(acc: Accumulator): acc is ExchangeableAccumulator {
  return typeof (acc as Partial<ExchangeableAccumulator>).record === "function" && typeof (acc as Partial<ExchangeableAccumulator>).reduce === "function";
}

/**
 * An accumulator that is a per-channel sum over pooled tokens of the linear's input squared
 * (Wanda's and ATV's s[c]): with --stats graph the block's graph computes each sample's sums
 * and only that `[in]` vector reaches the accumulator, samples in order (sample j's index makes
 * it the record a replica exchanges).
 */
export interface SampleSumsAccumulator extends Accumulator {
  addSampleSums(sums: Float32Array | Float64Array, subject: string, index?: number): void;
}

/**
 * How a linear's accumulator is made. Linears whose specs share a key share one accumulator (q,
 * k and v read the same activation: one sum of squares, one Hessian), created once and fed once
 * per sample.
 */
export interface AccumulatorSpec<A extends Accumulator = Accumulator> {
  key: string;
  /** the linear's output is needed as well as its input (the block cut exposes it) */
  needsOutput?: boolean;
  /**
   * the block's self-attention probabilities are needed (exposed from the graph's Softmax;
   * blocks with fused attention ops are refused)
   */
  needsAttention?: boolean;
  /**
   * Bytes the accumulator holds (SparseGPT's in×in Hessian): the engine calibrates the keys of a
   * block in groups that fit its budget, one dense forward per group, when they do not all fit.
   */
  bytes?: number;
  create(): A;
}

/**
 * Accumulator bytes one dense forward feeds by default (EngineContext.accumulatorBudgetBytes):
 * 2 GiB holds the Hessians and factors of a 7B decoder block's inputs 4096, 4096 and 4096.
 */
export const DEFAULT_ACCUMULATOR_BUDGET_BYTES = 2 * 1024 ** 3;

/** What a block's dense forward must yield for a method (or a profile's pre-pass). */
export interface CalibrationNeeds<A extends Accumulator = Accumulator> {
  pool: PoolRule;
  accumulator(linear: LinearInfo): AccumulatorSpec<A>;
}

// ---------------------------------------------------------------------------------------------
// How a linear is compressed

export interface LinearTarget {
  /** fraction to prune (from the plan's per-linear targets; with N:M it is N/M) */
  sparsity: number;
  pattern: Pattern;
}

export interface CompressInput<A extends Accumulator = Accumulator> {
  /** the dense weight; compress must not modify it (every linear of a block sees dense weights) */
  weight: WeightMatrix;
  linear: LinearInfo;
  /** the linear's accumulator after all N samples; undefined for methods with no calibration */
  stats: A | undefined;
  /** number of calibration samples N */
  samples: number;
  target: LinearTarget;
  /** mask selection (DESIGN §2 steps 4-5), on the job's mask threads; same bits at any count */
  masks: MaskSelector;
  /** SparseGPT's solves, on the job's solve threads (as many as mask threads); same bits at any count */
  solver: Solver;
}

/** What selects masks: a MaskPool (prune/maskPool.ts), on one thread or several. */
export interface MaskSelector {
  computeMasks(jobs: readonly MaskJob[]): Promise<MaskResult[]>;
}

/**
 * A mask to apply (Wanda, ATV, magnitude), or new weight bytes in the weight's own type and
 * layout (SparseGPT's update), with how many entries were pruned and facts for report.json.
 */
export type Compression =
  | { kind: "mask"; mask: Uint8Array; pruned: number; facts?: Record<string, number> }
  | { kind: "weights"; bytes: Uint8Array; pruned: number; facts?: Record<string, number> };

export interface Method<A extends Accumulator = Accumulator> {
  readonly name: string;
  /** what the block's dense forward must yield; undefined: no calibration, no forward (magnitude) */
  readonly calibration: CalibrationNeeds<A> | undefined;
  /** Refuses a calibration sample the method cannot use (ATV: one with no text tokens). */
  checkSample?(sample: CalibSample, where: string): void;
  compress(input: CompressInput<A>): Compression | Promise<Compression>;
  /**
   * What compressing `linear` costs relative to the block's other linears, by which replicas
   * share a block's compress step out (pipeline/compressShares.ts); default: its entries.
   */
  compressCost?(linear: LinearInfo): number;
}

/** The method options a job resolves once (see MethodDefinition.create). */
export interface MethodOptions {
  alpha: number;
  magnitudeScope: "matrix" | "column";
  pattern: Pattern;
  patternText: string;
}

/** A registry entry: the name users type, and what the method needs before a job starts. */
export interface MethodDefinition {
  readonly name: string;
  readonly needsCalibration: boolean;
  /** options the report's summary shows beside the method (e.g. ATV's alpha) */
  readonly shownOptions: readonly (keyof MethodOptions)[];
  /**
   * Whether --stats graph can compute its statistics inside the block's graph: its
   * accumulators are SampleSumsAccumulators (channel sums of squares) and its pool rule is
   * fixed or ATV's (cosine distances). Absent: they need whole activations (host only).
   */
  readonly statsInGraph?: boolean;
  /** Refuses option combinations the method cannot run, naming the field (InvalidArgumentError). */
  checkOptions?(options: MethodOptions): void;
  create(options: MethodOptions): Method;
  /**
   * The sparsity profile the method imposes for a pattern (TAMP: its DAS, or uniform for N:M);
   * absent: the job's --sparsity-profile.
   */
  ownProfile?(pattern: Pattern): string;
  /**
   * Whether the method's calibration can be split over replicas of a stage (its pool
   * observations and accumulators are exchangeable); absent: one replica per stage.
   */
  readonly replicable?: boolean;
  /**
   * Bytes of one sample's records for a block (what a replica sends its peers per sample, and
   * holds for every sample when it reduces them), for samples of `tokensPerSample` tokens;
   * present when `replicable`.
   */
  recordBytes?(linears: readonly LinearInfo[], tokensPerSample: number): number;
  /**
   * Bytes of the sums replicas reduce in a chain per block (SummingAccumulator: SparseGPT's
   * Hessians), one sample's record's worth: a replica fetches one or two of them per block, and
   * holds its own samples' records meanwhile (shardPlanner.ts: replicaHeldBytes).
   */
  sumBytes?(linears: readonly LinearInfo[]): number;
  /**
   * Bytes of one linear's compress result as the replicas of a stage exchange it
   * (pipeline/compressShares.ts); absent: a mask, one bit per entry.
   */
  resultBytes?(linear: LinearInfo): number;
  /**
   * Bytes the method holds beyond the block's weights while it prunes one block (SparseGPT's
   * in×in Hessians), with `threads` mask (and solve) threads (default 1), for the shard planner;
   * absent: small next to the weights.
   */
  workingBytes?(linears: readonly LinearInfo[], threads?: number): number;
  /**
   * What compressing `linear` costs relative to others, independent of calibration tokens (the
   * Method's compressCost, known before a job exists): `atvp plan` predicts a block's compress
   * step from it and shares it out between replicas as the engine does; absent: its entries.
   */
  compressCost?(linear: LinearInfo): number;
}

/** The compress cost of `linear` under `definition` (its entries where the method names none). */
export function linearCompressCost(definition: Pick<MethodDefinition, "compressCost">, linear: LinearInfo): number {
  return definition.compressCost?.(linear) ?? linear.inDim * linear.outDim;
}
