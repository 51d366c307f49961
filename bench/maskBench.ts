/**
 * Speed of mask selection on a float16 [4096, 4096] MatMul weight with a random positive scale,
 * one thread: absolute (params/s) and relative to a plain copy of the same bytes, which factors
 * out the machine's memory speed.
 */
import { performance } from "node:perf_hooks";
import { computeMask, type WeightMatrix } from "../services/core/src/prune/maskSelect.js";
import { OnnxDataType, floatToHalf } from "../services/core/src/onnx/dtype.js";
import type { BenchLine } from "./benchLine.js";
import { mulberry32 } from "../services/core/src/calib/seededRandom.js";

const IN = 4096;
const OUT = 4096;

/** Deterministic PRNG (mulberry32) so runs are comparable. */
const rng = mulberry32;

function bestOf(runs: number, fn: () => void): number {
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, performance.now() - t0);
  }
  return best / 1000;
}

export async function benchMask(): Promise<BenchLine[]> {
  const rand = rng(1234);
  const bits = new Uint16Array(IN * OUT);
  // Roughly normal weights (sum of uniforms), like a trained linear layer's.
  for (let i = 0; i < bits.length; i++) bits[i] = floatToHalf((rand() + rand() + rand() - 1.5) * 0.05);
  const scale = new Float64Array(IN);
  for (let c = 0; c < IN; c++) scale[c] = 1e-4 + rand() * rand() * 4;
  const bytes = new Uint8Array(bits.buffer);
  const w: WeightMatrix = { name: "bench", dataType: OnnxDataType.FLOAT16, layout: "in_out", inDim: IN, outDim: OUT, bytes };
  const opts = { sparsity: 0.5, pattern: { kind: "unstructured" as const } };

  computeMask(w, scale, opts); // warm up the JIT
  const maskS = bestOf(7, () => computeMask(w, scale, opts));
  const dst = new Uint8Array(bytes.length);
  const copyS = bestOf(20, () => dst.set(bytes));
  const shape = `${IN}x${OUT}`;
  return [
    { bench: "mask_params_per_s", value: (IN * OUT) / maskS, unit: "params/s", dtype: "float16", shape, seconds: maskS },
    { bench: "mask_vs_memcpy", value: maskS / copyS, unit: "ratio", dtype: "float16", shape, memcpy_seconds: copyS },
  ];
}
