/**
 * Splits a job's blocks into contiguous shards, one per worker, balancing weight bytes and
 * compute (FLOPs grow with parameters) and skipping workers whose memory cannot hold a block.
 * Contiguous shards keep the data plane a chain: shard k only talks to shard k-1.
 */
import { InvalidArgumentError } from "../../core/src/index.js";

export interface BlockCost {
  /** weight bytes of the block (what a worker must hold) */
  bytes: number;
  /** multiply-adds per token (parameters of its linears) */
  flops: number;
  /** what the method holds beyond the weights while pruning the block (SparseGPT's Hessians) */
  workingBytes?: number;
}

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
}

/**
 * Memory a worker needs for one block: its weights, plus room for onnxruntime and activations,
 * plus the method's own working memory.
 */
export function blockMemoryNeed(blockBytes: number, workingBytes = 0): number {
  return Math.ceil(blockBytes * 2) + workingBytes;
}

export function planShards(blocks: readonly BlockCost[], workers: readonly WorkerCapacity[], maxShards?: number): PlannedShard[] {
  if (blocks.length === 0) throw new InvalidArgumentError("model", "has no blocks to shard");
  const need = Math.max(...blocks.map((b) => blockMemoryNeed(b.bytes, b.workingBytes)));
  const eligible = workers.filter((w) => w.memoryBytes >= need);
  if (eligible.length === 0) {
    throw new InvalidArgumentError("workers", `no ready worker has the ${need} bytes of memory one block needs (workers: ${workers.map((w) => `${w.address}=${w.memoryBytes}`).join(", ") || "none"})`);
  }
  const k = Math.max(1, Math.min(eligible.length, blocks.length, maxShards && maxShards > 0 ? maxShards : Infinity));
  const totalBytes = blocks.reduce((a, b) => a + b.bytes, 0) || 1;
  const totalFlops = blocks.reduce((a, b) => a + b.flops, 0) || 1;
  const cost = blocks.map((b) => b.bytes / totalBytes + b.flops / totalFlops);
  const bounds = balancedPartition(cost, k);
  return bounds.map(([firstBlock, endBlock], index) => ({ index, firstBlock, endBlock, worker: eligible[index]!.address }));
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
