// Shard planning: contiguous, balanced by bytes and FLOPs, within each worker's memory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { balancedPartition, planGrid, planShards } from "../../services/coordinator/src/shardPlanner.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";
import { methodDefinition } from "../../services/core/src/methods/index.js";

test("equal blocks split as evenly as contiguity allows", () => {
  assert.deepEqual(balancedPartition([1, 1, 1, 1], 2), [[0, 2], [2, 4]]);
  assert.deepEqual(balancedPartition([1, 1, 1, 1, 1], 2), [[0, 2], [2, 5]]);
  assert.deepEqual(balancedPartition([1, 1, 1, 1, 1, 1, 1], 3), [[0, 2], [2, 4], [4, 7]]);
});

test("a heavy block gets a shard of its own", () => {
  assert.deepEqual(balancedPartition([1, 1, 6, 1, 1], 3), [[0, 2], [2, 3], [3, 5]]);
});

test("never more shards than blocks or workers; workers too small for a block are skipped", () => {
  const blocks = [{ bytes: 100, flops: 50 }, { bytes: 100, flops: 50 }, { bytes: 100, flops: 50 }];
  const shards = planShards(blocks, [
    { address: "a", memoryBytes: 1000 }, { address: "tiny", memoryBytes: 150 }, { address: "b", memoryBytes: 1000 },
    { address: "c", memoryBytes: 1000 }, { address: "d", memoryBytes: 1000 },
  ]);
  assert.deepEqual(shards.map((s) => [s.firstBlock, s.endBlock, s.worker]), [[0, 1, "a"], [1, 2, "b"], [2, 3, "c"]]);
  assert.equal(planShards(blocks, [{ address: "a", memoryBytes: 1000 }, { address: "b", memoryBytes: 1000 }], 1).length, 1);
});

test("no worker with enough memory is an error naming the workers", () => {
  assert.throws(() => planShards([{ bytes: 100, flops: 1 }], [{ address: "w1", memoryBytes: 10 }]),
    (e: unknown) => e instanceof InvalidArgumentError && /w1=10/.test(e.message));
});

test("SparseGPT's Hessians count: a worker that holds the weights but not the in×in Hessians is skipped", () => {
  // One block: q/k/v read x (in 64), o reads attn (in 64), up reads y (in 64, out 176), down reads z (in 176).
  const l = (weight: string, activation: string, inDim: number, outDim: number) =>
    ({ weight, node: weight, activation, inDim, outDim, dataType: 1, layout: "in_out" }) as never;
  const linears = [l("q", "x", 64, 64), l("k", "x", 64, 64), l("v", "x", 64, 64), l("o", "attn", 64, 64), l("up", "y", 64, 176), l("down", "z", 176, 64)];
  const working = methodDefinition("sparsegpt").workingBytes!(linears);
  // Hessians, the sample's own AᵀA and their factors U: 3 of 64² and one of 176² (float64 each,
  // plus a row and the dead flags per input); widest: 2·176² + 4·176·64 float64, and the Gram
  // memory the thread keeps, down's: (64 + 32) rows × 184 padded channels × 8 bytes, 3 pages;
  // the new weights: 4·(4·64² + 2·64·176) bytes.
  const expected = 3 * (3 * 64 * 64 * 8 + 64 * 9) + (3 * 176 * 176 * 8 + 176 * 9) + 8 * (2 * 176 * 176 + 4 * 176 * 64) + 3 * 65536 + 4 * (4 * 64 * 64 + 2 * 64 * 176);
  assert.equal(working, expected);
  assert.equal(methodDefinition("wanda").workingBytes, undefined);
  const weights = 4 * (4 * 64 * 64 + 2 * 64 * 176);
  const block = { bytes: weights, flops: 1, workingBytes: working };
  const roomForWeightsOnly = 2 * weights + 1;
  const shards = planShards([block], [{ address: "small", memoryBytes: roomForWeightsOnly }, { address: "big", memoryBytes: 2 * weights + working }]);
  assert.deepEqual(shards.map((s) => s.worker), ["big"]);
  assert.throws(() => planShards([block], [{ address: "small", memoryBytes: roomForWeightsOnly }]), (e: unknown) => e instanceof InvalidArgumentError && /small=/.test(e.message));
});

test("a chain's records: a replica holds its own samples', five sums and a sample's whole matrix (two sums), so more replicas need less and may fit where fewer do not", () => {
  const block = { bytes: 1000, flops: 1, workingBytes: 500, chainSumBytes: 100 };
  const request = { samples: 12, replicable: true, sequential: true, method: "sparsegpt" };
  // 2,500 for the block; at R replicas (ceil(12 / R) + 5 + 2) x 100 more: R = 2: 1,300, R = 3: 1,100, R = 4: 1,000.
  const four = Array.from({ length: 4 }, (_, i) => ({ address: `w${i}`, memoryBytes: 3500 }));
  const auto = planGrid([block], four, request);
  assert.deepEqual([auto.stages, auto.replicas], [1, 4]);
  // Three such workers cannot run 4 replicas, and 3 need 3,600 each.
  assert.deepEqual(planGrid([block], four.slice(0, 3), request).replicas, 1);
  assert.deepEqual(planGrid([block], four.slice(0, 3).map((w) => ({ ...w, memoryBytes: 3600 })), request).replicas, 3);
  assert.throws(() => planGrid([block], four, { ...request, replicas: 2 }),
    (e: unknown) => e instanceof InvalidArgumentError && /\(one of 2\) holds exchanged records beside a block: 3800 bytes/.test(e.message));
});

test("replicas hold every sample's records: only workers with room for them run replicas", () => {
  const block = { bytes: 1000, flops: 1, workingBytes: 500, replicaBytes: 4000 };
  const request = { samples: 8, replicable: true, sequential: true, method: "sparsegpt" };
  // Each needs 2·1000 + 500 = 2,500 for the block; a replica 6,500.
  const workers = [{ address: "a", memoryBytes: 6500 }, { address: "b", memoryBytes: 3000 }, { address: "c", memoryBytes: 7000 }];
  const auto = planGrid([block, block], workers, request);
  assert.deepEqual([auto.stages, auto.replicas, auto.shards.map((s) => s.worker)], [1, 2, ["a", "c"]]);
  const oneRoomy = planGrid([block, block], workers.slice(0, 2), request);
  assert.deepEqual([oneRoomy.stages, oneRoomy.replicas], [2, 1]);
  assert.throws(() => planGrid([block], [{ address: "b", memoryBytes: 3000 }], { ...request, replicas: 2 }),
    (e: unknown) => e instanceof InvalidArgumentError && e.subject === "replicas" && /6500 bytes, more than any worker has \(workers: b=3000\)/.test(e.message));
});
