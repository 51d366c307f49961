/**
 * Entry point of `atvp gen-model`: a synthetic LLaVA-style decoder with external weights plus a
 * matching calibration set, so the whole pruning pipeline can be exercised (and benchmarked up
 * to gigabyte sizes) without downloading a real model.
 */
import { mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError, OutputExistsError } from "../errors.js";
import { writeCalibration, type CalibSampleInfo } from "./calibGen.js";
import { resolveOptions, type DecoderConfig, type GenModelOptions } from "./config.js";
import { writeDecoder } from "./llavaDecoder.js";

export type { AttentionKind, DecoderConfig, GenModelOptions, NodeNaming, NormKind } from "./config.js";
export { resolveOptions } from "./config.js";

export interface GenModelResult {
  modelPath: string;
  dataPath: string;
  calibPath: string;
  /** Bytes of weight data (external data payload, alignment gaps not counted). */
  weightBytes: number;
  /** Size of model.onnx.data. */
  dataFileBytes: number;
  /** MatMul weights: 7 per layer plus lm_head. */
  numLinears: number;
  /** Their initializer names, in graph order, lm_head last. */
  linearWeights: string[];
  inputNames: string[];
  outputNames: string[];
  /** The fully resolved configuration (defaults filled in). */
  config: DecoderConfig;
  samples: CalibSampleInfo[];
  seconds: number;
}

export async function generateModel(opts: GenModelOptions): Promise<GenModelResult> {
  const started = performance.now();
  const { outDir, force, decoder, calib } = resolveOptions(opts);
  prepareOutDir(outDir, force);
  const model = writeDecoder(decoder, outDir);
  const written = writeCalibration(calib, decoder.hidden, decoder.fp16, decoder.seed, outDir);
  return {
    modelPath: model.modelPath,
    dataPath: model.dataPath,
    calibPath: written.calibPath,
    weightBytes: model.weightBytes,
    dataFileBytes: model.dataFileBytes,
    numLinears: model.linearWeights.length,
    linearWeights: model.linearWeights,
    inputNames: model.inputNames,
    outputNames: model.outputNames,
    config: decoder,
    samples: written.samples,
    seconds: (performance.now() - started) / 1000,
  };
}

export function prepareOutDir(outDir: string, force: boolean): void {
  try {
    mkdirSync(outDir, { recursive: true });
  } catch (err) {
    throw new InvalidArgumentError(outDir, `cannot create output directory (${(err as Error).message})`);
  }
  const existing = readdirSync(outDir);
  if (existing.length > 0 && !force) {
    throw new OutputExistsError(outDir, `output directory is not empty (${existing.slice(0, 3).map((f) => join(outDir, f)).join(", ")}${existing.length > 3 ? ", ..." : ""}); pass force to overwrite`);
  }
}
