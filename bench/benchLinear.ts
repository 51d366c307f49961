/** What the mask benchmarks share: a trained-looking float16 linear, and best-of timing. */
import { performance } from "node:perf_hooks";
import type { WeightMatrix } from "../services/core/src/prune/maskSelect.js";
import type { MaskPool } from "../services/core/src/prune/maskPool.js";
import { OnnxDataType, floatToHalf } from "../services/core/src/onnx/dtype.js";

/**
 * A float16 [in, out] MatMul weight of roughly normal values (sum of uniforms, like a trained
 * linear layer's) and a random positive scale per input channel, drawn from `rand` in that order.
 */
export function randomLinear(rand: () => number, name: string, inDim: number, outDim: number): { weight: WeightMatrix; scale: Float64Array } {
  const bits = new Uint16Array(inDim * outDim);
  for (let i = 0; i < bits.length; i++) bits[i] = floatToHalf((rand() + rand() + rand() - 1.5) * 0.05);
  const scale = new Float64Array(inDim);
  for (let c = 0; c < inDim; c++) scale[c] = 1e-4 + rand() * rand() * 4;
  return { weight: { name, dataType: OnnxDataType.FLOAT16, layout: "in_out", inDim, outDim, bytes: new Uint8Array(bits.buffer) }, scale };
}

/** The same weight in one of `pool`'s weight buffers, as the engine reads it there. */
export function inWeightBuffer(pool: MaskPool, w: WeightMatrix): WeightMatrix {
  const bytes = pool.weightBuffer(w.bytes.byteLength);
  if (!bytes) throw new Error(`the pool gave no weight buffer for ${w.name}`);
  bytes.set(w.bytes);
  return { ...w, bytes };
}

/** The fastest of `runs` runs of `fn`, in seconds. */
export async function bestOf(runs: number, fn: () => unknown): Promise<number> {
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    best = Math.min(best, performance.now() - t0);
  }
  return best / 1000;
}
