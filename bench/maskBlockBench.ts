/**
 * Mask selection over a whole decoder block, as the engine runs it: the seven linears of a
 * Llama-3-8B-shaped block (float16 [in, out], random positive scales), one call per linear, all
 * in one turn, on one thread and on a two-thread MaskPool that gets them as one batch, the weights
 * in the pool's weight buffers as the engine reads them (the other thread selects its share in
 * place). Beside it, in the same interleaved rounds: the weights in plain memory, those the pool
 * gives whole to the other thread moved there by transfer (MaskJob.lend; the engine's way before
 * the weight buffers); and the same pool given one plain linear per batch, each split by columns
 * and copied (what the engine did before it gathered a block's calls).
 */
import { MaskPool, type MaskJob } from "../services/core/src/prune/maskPool.js";
import type { WeightMatrix } from "../services/core/src/prune/maskSelect.js";
import { mulberry32 } from "../services/core/src/calib/seededRandom.js";
import type { BenchLine } from "./benchLine.js";
import { bestOf, inWeightBuffer, randomLinear } from "./benchLinear.js";

const HIDDEN = 4096;
const INTERMEDIATE = 14336;
const KV = 1024;
const SHAPES: Array<[string, number, number]> = [
  ["q_proj", HIDDEN, HIDDEN], ["k_proj", HIDDEN, KV], ["v_proj", HIDDEN, KV], ["o_proj", HIDDEN, HIDDEN],
  ["gate_proj", HIDDEN, INTERMEDIATE], ["up_proj", HIDDEN, INTERMEDIATE], ["down_proj", INTERMEDIATE, HIDDEN],
];
const ROUNDS = 5;

interface Linear {
  weight: WeightMatrix;
  scale: Float64Array;
  /** reused masks: plain for the one thread, shared for the pool (as MaskBuffers gives them) */
  plain: Uint8Array;
  shared: Uint8Array;
  /** the weight's bytes in the two-thread pool's weight buffer */
  resident?: WeightMatrix;
}

function block(): Linear[] {
  const rand = mulberry32(4321);
  return SHAPES.map(([name, inDim, outDim]) => ({
    ...randomLinear(rand, name, inDim, outDim),
    plain: new Uint8Array(inDim * outDim),
    shared: new Uint8Array(new SharedArrayBuffer(inDim * outDim)),
  }));
}

export async function benchMaskBlock(): Promise<BenchLine[]> {
  const linears = block();
  const options = { sparsity: 0.5, pattern: { kind: "unstructured" as const } };
  const job = (l: Linear, into: Uint8Array, lend: boolean): MaskJob => ({ weight: l.weight, scale: l.scale, options, into, lend });
  const one = MaskPool.start(1);
  const two = MaskPool.start(2);
  for (const l of linears) l.resident = inWeightBuffer(two, l.weight);
  const runs = {
    one: () => Promise.all(linears.map((l) => one.computeMasks([job(l, l.plain, true)]))),
    block: () => Promise.all(linears.map((l) => two.computeMasks([{ ...job(l, l.shared, true), weight: l.resident! }]))),
    lent: () => Promise.all(linears.map((l) => two.computeMasks([job(l, l.shared, true)]))),
    perLinear: async () => {
      for (const l of linears) await two.computeMasks([job(l, l.shared, false)]);
    },
  };
  const best = { one: Infinity, block: Infinity, lent: Infinity, perLinear: Infinity };
  try {
    // Warm up the JIT and the pool's learnt split (its first batches teach it nothing).
    for (let i = 0; i < 4; i++) await runs.block();
    await runs.lent();
    await runs.one();
    await runs.perLinear();
    // Interleaved, so all three see the same phases of a shared machine.
    for (let i = 0; i < ROUNDS; i++) {
      best.one = Math.min(best.one, await bestOf(1, runs.one));
      best.block = Math.min(best.block, await bestOf(1, runs.block));
      best.lent = Math.min(best.lent, await bestOf(1, runs.lent));
      best.perLinear = Math.min(best.perLinear, await bestOf(1, runs.perLinear));
    }
  } finally {
    await two.close();
    await one.close();
  }
  const params = linears.reduce((a, l) => a + l.weight.inDim * l.weight.outDim, 0);
  const shape = `Llama-3-8B block: ${SHAPES.map(([n, i, o]) => `${n} ${i}x${o}`).join(", ")}`;
  return [
    {
      bench: "mask_block_threads2_speedup", value: best.one / best.block, unit: "ratio", dtype: "float16", shape, params,
      one_thread_seconds: best.one, two_threads_seconds: best.block, mask: "the block's calls as one batch, the weights in the pool's weight buffers (as the engine reads them)",
    },
    {
      bench: "mask_block_threads2_speedup_lent", value: best.one / best.lent, unit: "ratio", dtype: "float16", shape, params,
      one_thread_seconds: best.one, two_threads_seconds: best.lent, mask: "the block's calls as one batch, the weights in plain memory, those given whole moved to the other thread",
    },
    {
      bench: "mask_block_threads2_speedup_per_linear", value: best.one / best.perLinear, unit: "ratio", dtype: "float16", shape, params,
      one_thread_seconds: best.one, two_threads_seconds: best.perLinear, mask: "one linear per batch, each split by columns and copied",
    },
  ];
}
