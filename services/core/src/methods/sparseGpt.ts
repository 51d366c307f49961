/**
 * SparseGPT (METHODS.md §1): a Hessian per linear over every attended token, then OBS pruning in
 * 128-input-channel slabs that also updates the surviving weights. ATV-SparseGPT is the same
 * compression over ATV's token pool (one pool for all linears of the block).
 */
import type { LinearInfo } from "../graph/linears.js";
import { elementSize } from "../onnx/dtype.js";
import { HessianAccumulator } from "../prune/hessian.js";
import { gramBytes, gramKeptBytes } from "../prune/gramKernelWasm.js";
import { relativeError } from "../prune/sparseGpt.js";
import { atv } from "./atv.js";
import { Hessian, hessians } from "./hessians.js";
import { DEFAULT_ACCUMULATOR_BUDGET_BYTES, type CompressInput, type Compression, type Method, type MethodDefinition } from "./method.js";
import { distanceRecordBytes, hessianRecordBytes } from "./recordBytes.js";
import { ATTENDED_TOKENS, atvTokens } from "./tokenPools.js";

/**
 * Compresses a copy of the dense weight (every linear of the block must see dense weights), on
 * the job's solve threads where it has them.
 */
async function compressWithHessian({ weight, stats, samples, target, solver }: CompressInput<Hessian>): Promise<Compression> {
  // The dense output energy needs H only: on a pool it runs beside the factoring and the update,
  // and the update is queued as soon as H is factored (down_proj's is a block's longest task).
  const updated = stats!.factoredBy(solver, samples).then((prepared) => solver.update(weight, prepared, { sparsity: target.sparsity, pattern: target.pattern }));
  const [{ bytes, update }, energy] = await Promise.all([updated, solver.energy(weight, stats!.matrix(samples))]);
  return { kind: "weights", bytes, pruned: update.pruned, facts: { relativeError: relativeError(update.errorEnergy, energy) } };
}

/** SparseGPT's result is the linear's new weights, in the weight's own type. */
function newWeightBytes(linear: LinearInfo): number {
  return linear.inDim * linear.outDim * elementSize(linear.dataType, linear.weight);
}

/** A solve's cost: the Cholesky factoring of the in x in Hessian and the column sweeps over the weight. */
function hessianSolveCost(linear: LinearInfo): number {
  return linear.inDim * linear.inDim * (linear.inDim + linear.outDim);
}

/**
 * A block's peak: one float64 Hessian and its factor U per distinct input (kept until every
 * linear is compressed), the Cholesky work of the widest input (two in×in), a linear's float64 copies
 * (original, working, written back, difference), and the new bytes of every linear until they
 * are applied. With solve threads, each may hold the widest work at once, and each keeps the
 * Gram kernel's memory of its largest quadratic form (gramKernelWasm.ts) beside it. (The Hessian
 * additions keep one too, tokens x (in + 8) float64 per thread up to GRAM_KEEP_BYTES: it grows
 * with the samples' lengths, like the activations, which this does not count either.)
 */
export function sparseGptWorkingBytes(linears: readonly LinearInfo[], threads = 1): number {
  const inputs = new Map(linears.map((l) => [l.activation, l.inDim]));
  const perInput = [...inputs.values()].map((n) => HessianAccumulator.bytes(n) + 8 * n * n + n);
  // Beyond the engine's budget the inputs are calibrated a group at a time.
  let bytes = Math.min(perInput.reduce((a, b) => a + b, 0), Math.max(DEFAULT_ACCUMULATOR_BUDGET_BYTES, ...perInput));
  let widest = 0;
  let gram = 0;
  for (const l of linears) {
    widest = Math.max(widest, 2 * 8 * l.inDim * l.inDim + 4 * 8 * l.inDim * l.outDim);
    gram = Math.max(gram, gramKeptBytes(gramBytes(l.inDim, l.outDim)));
    bytes += l.inDim * l.outDim * elementSize(l.dataType, l.weight);
  }
  widest += gram;
  return bytes + Math.max(1, threads) * widest;
}

export const sparseGpt: MethodDefinition = {
  name: "sparsegpt",
  needsCalibration: true,
  shownOptions: [],
  workingBytes: sparseGptWorkingBytes,
  replicable: true,
  recordBytes: () => 0,
  sumBytes: hessianRecordBytes,
  resultBytes: newWeightBytes,
  compressCost: hessianSolveCost,
  create(): Method<Hessian> {
    return { name: "sparsegpt", calibration: { pool: ATTENDED_TOKENS, accumulator: hessians }, compress: compressWithHessian, compressCost: hessianSolveCost };
  },
};

export const atvSparseGpt: MethodDefinition = {
  name: "atv-sparsegpt",
  needsCalibration: true,
  shownOptions: ["alpha"],
  workingBytes: sparseGptWorkingBytes,
  replicable: true,
  recordBytes: (_linears, tokens) => distanceRecordBytes(tokens),
  sumBytes: hessianRecordBytes,
  resultBytes: newWeightBytes,
  compressCost: hessianSolveCost,
  create(options): Method<Hessian> {
    return {
      name: "atv-sparsegpt",
      calibration: { pool: atvTokens(options.alpha), accumulator: hessians },
      // The same pool as ATV, so the same samples are refused.
      checkSample: atv.create(options).checkSample,
      compress: compressWithHessian,
      compressCost: hessianSolveCost,
    };
  },
};
