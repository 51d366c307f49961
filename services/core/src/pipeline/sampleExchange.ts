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
 * Items other than samples that the replicas share out (a block's linears, each compressed by
 * one replica): replica r owns items [bounds[r], bounds[r + 1]), every replica at least one.
 */
export interface ItemShares {
  readonly bounds: readonly number[];
}

/** Items [first, end) of replica r: its samples (replicaSamples), or its range of `shares`. */
export function ownedItems(samples: number, slice: ReplicaSlice, r: number, shares?: ItemShares): { first: number; end: number } {
  if (!shares) return replicaSamples(samples, slice.replicas, r);
  checkItemShares(shares, slice.replicas);
  return { first: shares.bounds[r]!, end: shares.bounds[r + 1]! };
}

/** The number of items an all-gather yields: N samples, or the items of `shares`. */
export function itemCount(samples: number, shares?: ItemShares): number {
  return shares ? shares.bounds[shares.bounds.length - 1]! : samples;
}

function checkItemShares(shares: ItemShares, replicas: number): void {
  const b = shares.bounds;
  const ok = b.length === replicas + 1 && b[0] === 0 && b.every((x, i) => Number.isInteger(x) && (i === 0 || x > b[i - 1]!));
  if (!ok) throw new InvalidArgumentError("shares", `bounds ${JSON.stringify(b)} do not give each of ${replicas} replicas a non-empty range of items from 0`);
}

/**
 * The all-gather between the replicas of one stage. Each replica calls allGather once per
 * (block, topic), with the records of its own items; every call resolves with the records of
 * all items (index = item). Items are the N samples, split by replicaSamples, unless `shares`
 * says otherwise (the same shares at every replica). Calls for one (block, topic) must give the
 * same result however often they are made (a replica rerun after a fault gathers again and gets
 * the same bits).
 */
export interface SampleExchange {
  readonly slice: ReplicaSlice;
  allGather(block: number, topic: string, own: ReadonlyMap<number, SampleRecord>, signal?: AbortSignal, shares?: ItemShares): Promise<SampleRecord[]>;
  /**
   * Point to point, for a reduction that runs down the replicas in a chain: this replica's one
   * record of (block, topic), kept for any replica that fetches it (also after this one is
   * gone). Posting again gives the same record.
   */
  post(block: number, topic: string, record: SampleRecord, signal?: AbortSignal): Promise<void>;
  /** Replica `from`'s record of (block, topic) with `vectors` vectors, once it is posted. */
  fetch(block: number, topic: string, from: number, vectors: number, signal?: AbortSignal): Promise<SampleRecord>;
}
