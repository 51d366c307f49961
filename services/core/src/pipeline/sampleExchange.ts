/**
 * Data-parallel calibration (issue 10 §1): the replicas of one stage each run a block's passes
 * over their own contiguous share of the samples, and exchange per-sample records (ATV's cosine
 * distances, each sample's sum of squares per channel) so that every replica can reduce them in
 * sample order: the same float64 operations, in the same order, as one process over all samples.
 * That is why the bits never depend on the number of replicas.
 */
import { InvalidArgumentError } from "../errors.js";

/** Which replica of its stage a run is, and so which samples it owns. */
export interface ReplicaSlice {
  replica: number;
  replicas: number;
}

/** Samples [first, end) of replica r when N samples are split over R replicas: contiguous, sizes differ by at most one. */
export function replicaSamples(samples: number, replicas: number, replica: number): { first: number; end: number } {
  if (!(Number.isInteger(replicas) && replicas >= 1)) throw new InvalidArgumentError("replicas", `must be a positive integer, got ${replicas}`);
  if (!(Number.isInteger(replica) && replica >= 0 && replica < replicas)) throw new InvalidArgumentError("replica", `must be in [0, ${replicas}), got ${replica}`);
  if (replicas > samples) throw new InvalidArgumentError("replicas", `${replicas} replicas for ${samples} calibration samples: every replica needs at least one sample`);
  const base = Math.floor(samples / replicas);
  const extra = samples % replicas;
  const first = replica * base + Math.min(replica, extra);
  return { first, end: first + base + (replica < extra ? 1 : 0) };
}

/** The replica that owns sample j. */
export function replicaOfSample(samples: number, replicas: number, j: number): number {
  for (let r = 0; r < replicas; r++) if (j < replicaSamples(samples, replicas, r).end) return r;
  throw new RangeError(`sample ${j} is not one of ${samples}`);
}

/**
 * One sample's record: a few float64 vectors (for instance one sum of squares per activation).
 * Records travel as little-endian float64.
 */
export type SampleRecord = Float64Array[];

/**
 * The all-gather between the replicas of one stage. Each replica calls allGather once per
 * (block, topic), with the records of its own samples; every call resolves with the records of
 * all N samples (index = sample). Calls for one (block, topic) must give the same result however
 * often they are made (a replica rerun after a fault gathers again and gets the same bits).
 */
export interface SampleExchange {
  readonly slice: ReplicaSlice;
  allGather(block: number, topic: string, own: ReadonlyMap<number, SampleRecord>, signal?: AbortSignal): Promise<SampleRecord[]>;
}
