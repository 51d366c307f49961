/**
 * FinalizeOutput: once every shard of a job is done, a worker (not the coordinator, which never
 * opens weights) copies the untouched weights into <out>/model.onnx.data.partial, renames it
 * and writes model.onnx. The layout the writer plans must be the plan's, region for region: a
 * mismatch means the plan was made for another model or version, and nothing is finalized.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  InvalidArgumentError, PrunedModelWriter, DATA_FILE, MODEL_FILE, PARTIAL_SUFFIX, TensorData,
  readModel, type JobPlan,
} from "../../../core/src/index.js";

export async function finalizeOutput(plan: JobPlan): Promise<void> {
  const out = resolve(plan.out);
  // Done already (a retried call after the first one finished): nothing to do.
  if (!existsSync(join(out, DATA_FILE + PARTIAL_SUFFIX)) && existsSync(join(out, MODEL_FILE)) && existsSync(join(out, DATA_FILE))) return;
  const loaded = readModel(plan.model);
  const data = new TensorData(loaded);
  try {
    const writer = await PrunedModelWriter.create(loaded, data, out, new Set(plan.linears.map((l) => l.weight)), { resume: true });
    try {
      if (writer.totalBytes !== plan.dataBytes) {
        throw new InvalidArgumentError("plan.dataBytes", `the plan's output data is ${plan.dataBytes} bytes, the model's layout ${writer.totalBytes}; the plan is for another model`);
      }
      for (const l of plan.linears) {
        const region = writer.plannedRegion(l.weight);
        if (!region || region.offset !== l.region.offset || region.length !== l.region.length) {
          throw new InvalidArgumentError("plan.linears", `${l.weight}'s region differs from the model's layout; the plan is for another model`);
        }
        writer.markWritten(l.weight);
      }
      await writer.finalize();
    } catch (err) {
      // The workers' pruned weights stay in the partial file: only the handle is closed.
      await writer.release();
      throw err;
    }
  } finally {
    await data.close();
  }
}
