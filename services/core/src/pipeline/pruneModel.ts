/**
 * The single-process pruner (`atvp prune`): streams blocks from disk one at a time, runs each
 * through the BlockEngine, writes pruned weights as soon as their block is done, and finishes
 * with model.onnx, model.onnx.data and report.json. No services, no network.
 */
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { writeFile, rename, rm } from "node:fs/promises";
import { loadCalibrationSet, type CalibSample } from "../calib/calibSet.js";
import { CalibrationError, InvalidArgumentError, UnsupportedTypeError } from "../errors.js";
import { FLOAT_WEIGHT_TYPES, typeName } from "../onnx/dtype.js";
import { PrunedModelWriter } from "../onnx/modelWriter.js";
import { prepareOutputDir, REPORT_FILE, PARTIAL_SUFFIX } from "../onnx/outputDir.js";
import { TensorData } from "../onnx/tensorData.js";
import { tokenCounts } from "../calib/calibSet.js";
import { InferenceHost } from "../runtime/inferenceHost.js";
import { BlockEngine, type SampleState } from "./blockEngine.js";
import { MaskPool } from "../prune/maskPool.js";
import { analyzeModel, type ModelAnalysis } from "./modelAnalysis.js";
import { isSelected, resolveSpec, type PruneSpec, type ResolvedSpec } from "./pruneSpec.js";
import type { BlockReport, LayerReport, PruneReport } from "./report.js";
import { checkSample, SampleFeeds } from "./sampleFeeds.js";

export type PruneEvent =
  | { type: "job_started"; blocks: number; samples: number; method: string; graphAnalysis: string }
  | { type: "block_started"; block: number; label: string }
  | { type: "block_finished"; block: number; label: string; seconds: number; tokensPerSecond: number; cosDistAvg: number | null; k: number[]; pruned: number; params: number }
  | { type: "job_finished"; seconds: number; out: string; sparsity: number };

export interface PruneOptions {
  onEvent?: (event: PruneEvent) => void;
  warn?: (message: string) => void;
}

export async function pruneModel(input: PruneSpec, options: PruneOptions = {}): Promise<PruneReport> {
  const started = performance.now();
  const spec = resolveSpec(input, availableParallelism());
  const emit = options.onEvent ?? (() => {});
  const analysis = analyzeModel(spec.model);
  const data = new TensorData(analysis.loaded);
  let writer: PrunedModelWriter | undefined;
  let host: InferenceHost | undefined;
  let maskPool: MaskPool | undefined;
  let finalized = false;
  try {
    await data.validate();
    const samples = spec.method === "magnitude" ? [] : loadSamples(spec, analysis);
    const toPrune = analysis.partition.blockLinears.flat().filter((l) => isSelected(spec, l.weight, l.node));
    for (const l of toPrune) {
      if (!FLOAT_WEIGHT_TYPES.has(l.dataType)) {
        throw new UnsupportedTypeError(l.weight, `weight of ${l.node} is ${typeName(l.dataType)}; atv-prune prunes float32, float16 and bfloat16 weights (leave it dense with --exclude)`);
      }
      // Checked here as well as in computeMask, so the job fails before --force clears the
      // output folder and before any block is calibrated.
      if (spec.pattern.kind === "nm" && l.inDim % spec.pattern.m !== 0) {
        throw new InvalidArgumentError(l.weight, `input dimension ${l.inDim} of ${l.node} is not a multiple of M=${spec.pattern.m} for the ${spec.patternText} pattern (leave it dense with --exclude)`);
      }
    }
    await prepareOutputDir(spec.out, spec.force);
    writer = await PrunedModelWriter.create(analysis.loaded, data, spec.out, new Set(toPrune.map((l) => l.weight)));
    host = InferenceHost.start({ threads: spec.threads, device: spec.device, warn: options.warn });
    const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
    maskPool = MaskPool.start(spec.maskThreads);
    const engine = new BlockEngine({ ...analysis, data, spec, host, samples, feeds, maskPool });
    emit({ type: "job_started", blocks: analysis.partition.numBlocks, samples: samples.length, method: spec.method, graphAnalysis: analysis.partition.method });

    let states: SampleState[] = spec.method === "magnitude" ? [] : await engine.initialStates();
    const blocks: BlockReport[] = [];
    const layers: LayerReport[] = [];
    for (let b = 0; b < analysis.partition.numBlocks; b++) {
      emit({ type: "block_started", block: b, label: analysis.plan.blocks[b]!.label });
      const result = await engine.runBlock(b, states);
      for (const w of result.weights) await writer.writeTensor(w.name, w.bytes);
      engine.recycle(result.weights);
      states = result.next;
      blocks.push(result.report);
      layers.push(...result.layers);
      emit({
        type: "block_finished", block: b, label: result.report.label, seconds: result.report.seconds,
        tokensPerSecond: result.report.tokensPerSecond, cosDistAvg: result.report.cosDistAvg, k: result.report.k,
        pruned: result.layers.reduce((a, l) => a + l.pruned, 0), params: result.layers.reduce((a, l) => a + l.params, 0),
      });
    }
    await host.close();
    host = undefined;
    await writer.finalize();
    finalized = true;
    const report = buildReport(spec, input, analysis, samples, blocks, layers, (performance.now() - started) / 1000);
    const reportPath = join(spec.out, REPORT_FILE);
    await writeFile(reportPath + PARTIAL_SUFFIX, JSON.stringify(report, null, 2) + "\n");
    await rename(reportPath + PARTIAL_SUFFIX, reportPath);
    writer = undefined; // the output is complete: nothing below may remove it
    emit({ type: "job_finished", seconds: report.totals.seconds, out: spec.out, sparsity: report.totals.sparsity });
    return report;
  } catch (err) {
    await writer?.abort().catch(() => {});
    if (writer) {
      // A failure after finalize (writing report.json) must not leave a model.onnx that looks
      // like a finished job; the writer refused existing files, so these are ours.
      const ours = [join(spec.out, REPORT_FILE + PARTIAL_SUFFIX), ...(finalized ? [writer.modelPath, writer.dataPath] : [])];
      await Promise.all(ours.map((f) => rm(f, { force: true }).catch(() => {})));
    }
    throw err;
  } finally {
    await host?.close();
    await maskPool?.close();
    await data.close();
  }
}

/** Loads and checks the calibration set; `headersOnly` skips the embeddings' data (see CalibSelection). */
export function loadSamples(spec: ResolvedSpec, analysis: ModelAnalysis, headersOnly = false): CalibSample[] {
  const calib = spec.calib!;
  const samples = loadCalibrationSet(calib, { nsamples: spec.nsamples, seed: spec.seed, headersOnly });
  const main = analysis.partition.mainInput;
  const vi = analysis.index.inputs.get(main)!;
  for (const s of samples) {
    checkSample(s, main, vi, calib, analysis.index.inputs.get("position_ids"));
    const { nText, nVisual } = tokenCounts(s);
    if (spec.method === "atv" && nText === 0) {
      throw new CalibrationError(`${calib}:${s.line}`, "the sample has no text tokens: ATV's pool would be empty (k = round(ratio * nText) = 0); remove it or mark its text tokens in image_mask");
    }
    if (nText + nVisual === 0) {
      throw new CalibrationError(`${calib}:${s.line}`, "the sample has no attended tokens");
    }
  }
  return samples;
}

export function buildReport(
  spec: ResolvedSpec, input: PruneSpec, analysis: ModelAnalysis, samples: readonly CalibSample[],
  blocks: BlockReport[], layers: LayerReport[], seconds: number,
): PruneReport {
  const params = layers.reduce((a, l) => a + l.params, 0);
  const pruned = layers.reduce((a, l) => a + l.pruned, 0);
  return {
    method: spec.method,
    sparsity: spec.sparsity,
    pattern: spec.patternText,
    alpha: spec.alpha,
    propagation: spec.propagation,
    layers,
    blocks,
    totals: {
      params, pruned, sparsity: params === 0 ? 0 : pruned / params,
      blocks: analysis.partition.numBlocks,
      samples: samples.length,
      tokens: samples.reduce((a, s) => a + s.tokens, 0),
      seconds,
      graphAnalysis: analysis.partition.method,
      device: spec.device,
      threads: spec.threads,
    },
    spec: { ...input, floatType: typeName(analysis.floatType) },
  };
}
