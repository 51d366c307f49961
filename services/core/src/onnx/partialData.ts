/**
 * <out>/model.onnx.data.partial, created empty and sized before a cluster job's workers write
 * their regions into it (the layout comes from the JobPlan, so creating it reads no weight).
 */
import { open, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { OutputExistsError } from "../errors.js";
import { DATA_FILE, MODEL_FILE, PARTIAL_SUFFIX } from "./outputDir.js";
import { existsSync } from "node:fs";

export function partialDataPath(outDir: string): string {
  return join(resolve(outDir), DATA_FILE + PARTIAL_SUFFIX);
}

/** Creates the sized partial file; refuses an output that already holds a model. */
export async function createPartialData(outDir: string, bytes: number): Promise<void> {
  for (const f of [MODEL_FILE, DATA_FILE]) {
    const path = join(resolve(outDir), f);
    if (existsSync(path)) throw new OutputExistsError(path, "already exists; prepare the output folder first (use --force to overwrite)");
  }
  const handle = await open(partialDataPath(outDir), "w");
  try {
    // Sized up front so regions can be written in any order; alignment gaps stay sparse.
    await handle.truncate(bytes);
  } finally {
    await handle.close();
  }
}

/** Removes the partial data (and a model.onnx written half-way) of a job that will not finish. */
export async function removePartialData(outDir: string): Promise<void> {
  await rm(partialDataPath(outDir), { force: true });
  await rm(join(resolve(outDir), MODEL_FILE + PARTIAL_SUFFIX), { force: true });
}
