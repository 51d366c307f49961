// A small generated model and calibration set, with the bytes `atvp prune` writes for it (ATV,
// sparsity 0.5, alpha 4, sequential): what a cluster job on it must reproduce exactly.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";

export interface SmallJob {
  model: string;
  calib: string;
  /** model.onnx.data of the single-process run */
  reference: Buffer;
}

export async function smallJobWithReference(dir: string, layers = 4): Promise<SmallJob> {
  const g = await generateModel({ outDir: join(dir, "model"), layers, hidden: 64, samples: 12, seqLen: 48, imageTokens: 20, seed: 5 });
  const out = join(dir, "ref");
  await pruneModel({ model: g.modelPath, calib: g.calibPath, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential", out, threads: 1 });
  return { model: g.modelPath, calib: g.calibPath, reference: readFileSync(join(out, "model.onnx.data")) };
}
