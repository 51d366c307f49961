/**
 * Splits a job's blocks into contiguous shards, one per worker, balancing weight bytes and
 * compute (FLOPs grow with parameters) and skipping workers whose memory cannot hold a block.
 * Contiguous shards keep the data plane a chain: shard k only talks to shard k-1.
 */
import { checkReplicas, InvalidArgumentError } from "../../core/src/index.js";

export interface BlockCost {
  /** weight bytes of the block (what a worker must hold) */
  bytes: number;
  /** multiply-adds per token (parameters of its linears) */
  flops: number;
  /** what the method holds beyond the weights while pruning the block (SparseGPT's Hessians) */
  workingBytes?: number;
  /**
   * what a replica of the block's stage also holds: every sample's exchanged records (per-sample
   * SparseGPT Hessians, sums of squares) when it reduces them; only with more than one replica
   */
  replicaBytes?: number;
  /**
   * one sample's worth of the sums replicas reduce in a chain (SparseGPT's Hessians): a replica
   * holds its own samples' records of them and a few sums (CHAIN_SUMS_HELD)
   */
  chainSumBytes?: number;
}

/**
 * Sums of a chain a replica holds beside its own samples' records: the one before it and the
 * total it fetches, and its own posted sums of the last three blocks (the exchange registry's).
 */
export const CHAIN_SUMS_HELD = 5;

/**
 * A replica that exchanges records forms each sample's whole matrix beside its running sum
 * (HessianAccumulator.keepRecords), where one process forms it a chunk of rows at a time: an
 * in×in float64, about two packed sums.
 */
export const SAMPLE_MATRIX_SUMS = 2;

export interface WorkerCapacity {
  address: string;
  memoryBytes: number;
}

export interface PlannedShard {
  index: number;
  firstBlock: number;
  /** exclusive */
  endBlock: number;
  worker: string;
  /** its stage (contiguous blocks) and its replica of that stage (a share of the samples) */
  stage: number;
  replica: number;
}

/** A grid of stages x replicas; shard index = stage * replicas + replica. */
export interface PlannedGrid {
  stages: number;
  replicas: number;
  shards: PlannedShard[];
}

export interface GridRequest {
  /** at most this many workers (0 or absent: every eligible one) */
  maxWorkers?: number;
  /** replicas per stage; 0 or absent: the planner chooses */
  replicas?: number;
  /** calibration samples (a replica needs at least one) */
  samples: number;
  /** whether the method's calibration can be split over replicas (MethodDefinition.replicable) */
  replicable: boolean;
  /** sequential propagation waits for each block's masks, so stages cannot overlap: replicas pay */
  sequential: boolean;
  /** names the method in the error when replicas are asked of one that cannot have them */
  method: string;
}

/**
 * The stages x replicas grid over the eligible workers. Replicas split the calibration samples
 * of every block, so R replicas run a block about R times faster whatever the propagation, while
 * stages only overlap when propagation is dense; a worker streams one block at a time, so memory
 * never asks for more stages than the blocks' need allows. Chosen by default: with sequential
 * propagation and a method that can be split, one stage of as many replicas as there are workers
 * (and samples); otherwise one replica per stage, a stage per worker.
 */
export function planGrid(blocks: readonly BlockCost[], workers: readonly WorkerCapacity[], r: GridRequest): PlannedGrid {
  const requested = r.replicas ?? 0;
  if (requested > 1 && !r.replicable) checkReplicas(r.method, requested);
  if (requested > 1 && requested > r.samples) {
    throw new InvalidArgumentError("replicas", `${requested} replicas for ${r.samples} calibration samples: every replica needs at least one sample`);
  }
  // Refuses, naming the workers, when none holds even one block.
  eligibleWorkers(blocks, workers);
  // A replica holds records beside the block (fewer of them the more replicas share the samples):
  // fewer workers may have room for that.
  const maxWorkers = r.maxWorkers && r.maxWorkers > 0 ? r.maxWorkers : Infinity;
  const roomyFor = (need: number) => workers.filter((wk) => wk.memoryBytes >= need);
  let replicas = requested > 0 ? requested : 1;
  if (requested === 0 && r.replicable && r.sequential) {
    // The most replicas that as many roomy workers can run.
    for (let R = Math.min(workers.length, maxWorkers, r.samples); R > 1; R--) {
      if (roomyFor(replicaMemoryNeed(blocks, r.samples, R)).length >= R) {
        replicas = R;
        break;
      }
    }
  }
  const replicaNeed = replicaMemoryNeed(blocks, r.samples, Math.max(2, replicas));
  const roomy = roomyFor(replicaNeed);
  const w = Math.max(1, Math.min(roomy.length, maxWorkers));
  if (replicas === 1) {
    const shards = planShards(blocks, workers, r.maxWorkers);
    return { stages: shards.length, replicas: 1, shards };
  }
  if (roomy.length === 0) {
    throw new InvalidArgumentError("replicas", `a replica of ${r.method} (one of ${Math.max(2, replicas)}) holds exchanged records beside a block: ${replicaNeed} bytes, more than any worker has (workers: ${workers.map((wk) => `${wk.address}=${wk.memoryBytes}`).join(", ")}); use 1`);
  }
  // Replicas first: S stages of R replicas on S * R workers; with fewer workers than R a worker runs more than one.
  const stages = Math.max(1, Math.min(blocks.length, Math.floor(w / replicas)));
  const bounds = balancedPartition(stageCosts(blocks), stages);
  const shards = bounds.flatMap(([firstBlock, endBlock], stage) => Array.from({ length: replicas }, (_, replica) => {
    const index = stage * replicas + replica;
    return { index, firstBlock, endBlock, worker: roomy[index % w]!.address, stage, replica };
  }));
  return { stages, replicas, shards };
}

/**
 * Memory a worker needs for one block: its weights, plus room for onnxruntime and activations,
 * plus the method's own working memory.
 */
export function blockMemoryNeed(blockBytes: number, workingBytes = 0): number {
  return Math.ceil(blockBytes * 2) + workingBytes;
}

/** What a worker running one of `replicas` replicas of a stage needs for its largest block, with `samples` samples. */
export function replicaMemoryNeed(blocks: readonly BlockCost[], samples: number, replicas: number): number {
  return Math.max(...blocks.map((b) => blockMemoryNeed(b.bytes, b.workingBytes) + replicaHeldBytes(b, samples, replicas)));
}

/** What a replica holds beside a block: every sample's gathered records, its own samples' of a chain, the chain's sums and a sample's whole matrix. */
export function replicaHeldBytes(b: BlockCost, samples: number, replicas: number): number {
  return (b.replicaBytes ?? 0) + (Math.ceil(samples / replicas) + CHAIN_SUMS_HELD + SAMPLE_MATRIX_SUMS) * (b.chainSumBytes ?? 0);
}

export function planShards(blocks: readonly BlockCost[], workers: readonly WorkerCapacity[], maxShards?: number): PlannedShard[] {
  const eligible = eligibleWorkers(blocks, workers);
  const k = Math.max(1, Math.min(eligible.length, blocks.length, maxShards && maxShards > 0 ? maxShards : Infinity));
  const bounds = balancedPartition(stageCosts(blocks), k);
  return bounds.map(([firstBlock, endBlock], index) => ({ index, firstBlock, endBlock, worker: eligible[index]!.address, stage: index, replica: 0 }));
}

/** The workers whose memory holds the largest block's need (the blocks stream one at a time). */
function eligibleWorkers(blocks: readonly BlockCost[], workers: readonly WorkerCapacity[]): WorkerCapacity[] {
  if (blocks.length === 0) throw new InvalidArgumentError("model", "has no blocks to shard");
  const need = Math.max(...blocks.map((b) => blockMemoryNeed(b.bytes, b.workingBytes)));
  const eligible = workers.filter((w) => w.memoryBytes >= need);
  if (eligible.length === 0) {
    throw new InvalidArgumentError("workers", `no ready worker has the ${need} bytes of memory one block needs (workers: ${workers.map((w) => `${w.address}=${w.memoryBytes}`).join(", ") || "none"})`);
  }
  return eligible;
}

/** Each block's share of the bytes plus its share of the FLOPs: what a stage balances. */
function stageCosts(blocks: readonly BlockCost[]): number[] {
  const totalBytes = blocks.reduce((a, b) => a + b.bytes, 0) || 1;
  const totalFlops = blocks.reduce((a, b) => a + b.flops, 0) || 1;
  return blocks.map((b) => b.bytes / totalBytes + b.flops / totalFlops);
}

/** Contiguous partition of `cost` into k non-empty parts minimizing the largest part (exact DP). */
export function balancedPartition(cost: readonly number[], k: number): Array<[number, number]> {
  const n = cost.length;
  const prefix = [0];
  for (const c of cost) prefix.push(prefix[prefix.length - 1]! + c);
  const sum = (i: number, j: number) => prefix[j]! - prefix[i]!;
  // best[p][j]: minimal max-part cost of the first j blocks in p parts; cut[p][j]: start of the last part
  const best = Array.from({ length: k + 1 }, () => new Array<number>(n + 1).fill(Infinity));
  const cut = Array.from({ length: k + 1 }, () => new Array<number>(n + 1).fill(0));
  best[0]![0] = 0;
  for (let p = 1; p <= k; p++) {
    for (let j = p; j <= n; j++) {
      for (let i = p - 1; i < j; i++) {
        const v = Math.max(best[p - 1]![i]!, sum(i, j));
        // On ties the earliest cut wins (i ascends), so earlier shards are no bigger than later
        // ones: the first shard also runs the prologue, and downstream shards start sooner.
        if (v < best[p]![j]! - 1e-12) {
          best[p]![j] = v;
          cut[p]![j] = i;
        }
      }
    }
  }
  const parts: Array<[number, number]> = [];
  let j = n;
  for (let p = k; p >= 1; p--) {
    const i = cut[p]![j]!;
    parts.unshift([i, j]);
    j = i;
  }
  return parts;
}
