/**
 * SparseGPT (METHODS.md §1): a Hessian per linear over every attended token, then OBS pruning in
 * 128-input-channel slabs that also updates the surviving weights. ATV-SparseGPT is the same
 * compression over ATV's token pool (one pool for all linears of the block).
 */
import { sparseGptCompress } from "../prune/sparseGpt.js";
import { atv } from "./atv.js";
import { Hessian, hessians } from "./hessians.js";
import type { CompressInput, Compression, Method, MethodDefinition } from "./method.js";
import { ATTENDED_TOKENS, atvTokens } from "./tokenPools.js";

/** Compresses a copy of the dense weight: every linear of the block must see dense weights. */
function compressWithHessian({ weight, stats, samples, target }: CompressInput<Hessian>): Compression {
  const copy = { ...weight, bytes: weight.bytes.slice() };
  const r = sparseGptCompress(copy, stats!.matrix(samples), { sparsity: target.sparsity, pattern: target.pattern });
  return { kind: "weights", bytes: copy.bytes, pruned: r.pruned, facts: { relativeError: r.relativeError } };
}

export const sparseGpt: MethodDefinition = {
  name: "sparsegpt",
  needsCalibration: true,
  shownOptions: [],
  create(): Method<Hessian> {
    return { name: "sparsegpt", calibration: { pool: ATTENDED_TOKENS, accumulator: hessians }, compress: compressWithHessian };
  },
};

export const atvSparseGpt: MethodDefinition = {
  name: "atv-sparsegpt",
  needsCalibration: true,
  shownOptions: ["alpha"],
  create(options): Method<Hessian> {
    return {
      name: "atv-sparsegpt",
      calibration: { pool: atvTokens(options.alpha), accumulator: hessians },
      // The same pool as ATV, so the same samples are refused.
      checkSample: atv.create(options).checkSample,
      compress: compressWithHessian,
    };
  },
};
