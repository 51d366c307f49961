/**
 * The other half of mask_threads2_ceiling: a thread that selects a whole linear's mask, on its own
 * copy of the weights and into its own buffer (no pool, no sharing), each time it is asked, and
 * answers with its milliseconds.
 */
import { parentPort, workerData } from "node:worker_threads";
import { performance } from "node:perf_hooks";
import { computeMask, type MaskOptions, type WeightMatrix } from "../services/core/src/prune/maskSelect.js";

const { weight, scale, options } = workerData as { weight: WeightMatrix; scale: Float64Array; options: MaskOptions };
const into = new Uint8Array(weight.inDim * weight.outDim);
computeMask(weight, scale, options, into); // warm up the JIT
parentPort!.on("message", () => {
  const t0 = performance.now();
  computeMask(weight, scale, options, into);
  parentPort!.postMessage(performance.now() - t0);
});
parentPort!.postMessage("ready");
