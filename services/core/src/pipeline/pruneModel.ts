/**
 * The single-process pruner (`atvp prune`): streams blocks from disk one at a time, runs each
 * through the BlockEngine, writes pruned weights as soon as their block is done, and finishes
 * with model.onnx, model.onnx.data and report.json. No services, no network.
 */
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { writeFile, rename, rm } from "node:fs/promises";
import { loadCalibrationSet, type CalibSample } from "../calib/calibSet.js";
import { CalibrationError, InvalidArgumentError } from "../errors.js";
import { typeName } from "../onnx/dtype.js";
import { PrunedModelWriter } from "../onnx/modelWriter.js";
import { checkOutputLocation, prepareOutputDir, releaseOutput, REPORT_FILE, PARTIAL_SUFFIX, type PreparedOutput } from "../onnx/outputDir.js";
import { fsErrorToTyped } from "../io/fsErrors.js";
import { TensorData } from "../onnx/tensorData.js";
import { tokenCounts } from "../calib/calibSet.js";
import { InferenceHost } from "../runtime/inferenceHost.js";
import { clampThreads } from "../runtime/threadLimit.js";
import { checkReplicas, createMethod, methodDefinition } from "../methods/index.js";
import { planJob, planTargets, selectPrunable } from "../plan/jobPlan.js";
import { jobProfile } from "../profiles/index.js";
import { profileTargets } from "./profilePhase.js";
import { arraySource, BlockEngine, type SampleState } from "./blockEngine.js";
import { LocalExchangeHub } from "./localExchange.js";
import { MaskPool } from "../prune/maskPool.js";
import { SolvePool } from "../prune/solvePool.js";
import { analyzeModel, type ModelAnalysis } from "./modelAnalysis.js";
import { resolveSpec, type PruneSpec, type ResolvedSpec } from "./pruneSpec.js";
import { blockSparsity, type BlockReport, type LayerReport, type PruneReport } from "./report.js";
import { checkSample, SampleFeeds } from "./sampleFeeds.js";

export type PruneEvent =
  | { type: "job_started"; blocks: number; samples: number; method: string; graphAnalysis: string }
  | { type: "block_started"; block: number; label: string }
  | { type: "block_finished"; block: number; label: string; seconds: number; tokensPerSecond: number; cosDistAvg: number | null; k: number[]; pruned: number; params: number }
  | { type: "job_finished"; seconds: number; out: string; sparsity: number };

export interface PruneOptions {
  onEvent?: (event: PruneEvent) => void;
  warn?: (message: string) => void;
  /** bytes of accumulators one dense forward may feed (EngineContext.accumulatorBudgetBytes) */
  accumulatorBudgetBytes?: number;
  /**
   * Runs the blocks as this many data-parallel replicas in this process (each its own share of
   * the samples, exchanging records in memory): the cluster's reduction, checked without a
   * network. The output is the same bits at every count.
   */
  replicas?: number;
}

export async function pruneModel(input: PruneSpec, options: PruneOptions = {}): Promise<PruneReport> {
  const started = performance.now();
  const resolved = resolveSpec(input, availableParallelism());
  // Clamped here, not only in the InferenceHost, so report.json records the threads used.
  const warn = options.warn ?? ((m: string) => process.stderr.write(m + "\n"));
  // Mask threads past the cores only cost memory (a kernel each): clamped too, same bits.
  const spec = { ...resolved, threads: clampThreads(resolved.threads, warn), maskThreads: clampThreads(resolved.maskThreads, warn, "--mask-threads") };
  const emit = options.onEvent ?? (() => {});
  // First of all: a hopeless --out (under /proc, below a file) must not wait for the analysis.
  await checkOutputLocation(spec.out);
  const analysis = analyzeModel(spec.model);
  const data = new TensorData(analysis.loaded);
  let writer: PrunedModelWriter | undefined;
  let host: InferenceHost | undefined;
  let prepared: PreparedOutput | undefined;
  let maskPool: MaskPool | undefined;
  let solvePool: SolvePool | undefined;
  let finalized = false;
  try {
    await data.validate();
    const samples = methodDefinition(spec.method).needsCalibration ? loadSamples(spec, analysis) : [];
    const selection = selectPrunable(spec, analysis);
    prepared = await prepareOutputDir(spec.out, spec.force, { inputs: jobInputs(spec, data, samples), lock: {} });
    const plan = planJob(spec, analysis, data, selection);
    writer = await PrunedModelWriter.create(analysis.loaded, data, spec.out, new Set(plan.linears.map((l) => l.weight)));
    host = InferenceHost.start({ threads: spec.threads, device: spec.device, warn: options.warn });
    const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
    maskPool = MaskPool.start(spec.maskThreads);
    // Its threads start only if the method solves (SparseGPT); one mask thread solves here.
    solvePool = spec.maskThreads > 1 ? new SolvePool(spec.maskThreads) : undefined;
    // The plan's selection, with the profile's placeholder targets until the profile phase ran.
    const context = { ...analysis, data, spec, host, samples, feeds, targets: planTargets(plan), accumulatorBudgetBytes: options.accumulatorBudgetBytes, maskPool, ...(solvePool ? { solver: solvePool } : {}) };
    // The profile phase (OWL): a dense pass over every block before any block is pruned.
    const targets = plan.phases.includes("profile")
      ? await profileTargets(new BlockEngine(context), jobProfile(spec), { sparsity: spec.sparsity, linears: selection })
      : planTargets(plan);
    const replicas = options.replicas ?? 1;
    checkReplicas(spec.method, replicas);
    const hub = replicas > 1 ? new LocalExchangeHub(samples.length, replicas) : undefined;
    const engines = Array.from({ length: replicas }, (_, r) => new BlockEngine({ ...context, targets, ...(hub ? { exchange: hub.member(r) } : {}) }));
    emit({ type: "job_started", blocks: analysis.partition.numBlocks, samples: samples.length, method: spec.method, graphAnalysis: analysis.partition.method });

    let states: SampleState[][] = await Promise.all(engines.map((e) => (samples.length === 0 ? [] : e.initialStates())));
    const blocks: BlockReport[] = [];
    const layers: LayerReport[] = [];
    for (let b = 0; b < analysis.partition.numBlocks; b++) {
      emit({ type: "block_started", block: b, label: analysis.plan.blocks[b]!.label });
      const results = await Promise.all(engines.map((e, r) => e.runBlock(b, arraySource(states[r]!, e.first))));
      const result = results[0]!;
      for (const w of result.weights) await writer.writeTensor(w.name, w.bytes);
      engines.forEach((e, r) => e.recycle(results[r]!.weights));
      states = results.map((r) => r.next);
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
    await releaseOutput(prepared, false);
    prepared = undefined;
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
    await releaseOutput(prepared);
    throw fsErrorToTyped(err, spec.out);
  } finally {
    await host?.close();
    await maskPool?.close();
    await solvePool?.close();
    await data.close();
  }
}

/** Every file a job reads: --force must never delete one, and the output must not land on one. */
export function jobInputs(spec: Pick<ResolvedSpec, "model" | "calib">, data: TensorData, samples: readonly CalibSample[]): string[] {
  const files = [spec.model, ...data.externalFiles()];
  if (spec.calib) files.push(spec.calib);
  for (const s of samples) if (s.embeds) files.push(s.embeds.file);
  return files;
}

/** Loads and checks the calibration set; `headersOnly` skips the embeddings' data (see CalibSelection). */
export function loadSamples(spec: ResolvedSpec, analysis: ModelAnalysis, headersOnly = false): CalibSample[] {
  const calib = spec.calib!;
  const samples = loadCalibrationSet(calib, { nsamples: spec.nsamples, seed: spec.seed, headersOnly });
  const method = createMethod(spec);
  const main = analysis.partition.mainInput;
  const vi = analysis.index.inputs.get(main)!;
  for (const s of samples) {
    checkSample(s, main, vi, calib, analysis.index.inputs.get("position_ids"));
    const { nText, nVisual } = tokenCounts(s);
    method.checkSample?.(s, `${calib}:${s.line}`);
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
    sparsityProfile: { name: spec.sparsityProfile, ...jobProfile(spec).options },
    sparsity: spec.sparsity,
    pattern: spec.patternText,
    alpha: spec.alpha,
    propagation: spec.propagation,
    layers,
    blocks: blocks.map((b) => ({ ...b, ...blockSparsity(layers.filter((l) => l.block === b.index)) })),
    totals: {
      params, pruned, sparsity: params === 0 ? 0 : pruned / params,
      blocks: analysis.partition.numBlocks,
      samples: samples.length,
      tokens: samples.reduce((a, s) => a + s.tokens, 0),
      tokenPasses: samples.reduce((a, s) => a + s.tokens, 0) * analysis.partition.numBlocks,
      seconds,
      graphAnalysis: analysis.partition.method,
      device: spec.device,
      threads: spec.threads,
    },
    spec: { ...input, floatType: typeName(analysis.floatType) },
  };
}
