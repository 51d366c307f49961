// Shard planning: contiguous, balanced by bytes and FLOPs, within each worker's memory.
import { test } from "node:test";
import assert from "node:assert/strict";
import { balancedPartition, planShards } from "../../services/coordinator/src/shardPlanner.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";

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
