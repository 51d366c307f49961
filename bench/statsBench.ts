/**
 * host_bytes_per_block_over_weight_bytes (issue 10 §3): bytes copied out of onnxruntime for the
 * statistics per block, over the block's prunable weight bytes, for `--stats graph` (value) and
 * `--stats host` (host_stats_value), ATV sequential on the medium generated model.
 *
 * Counted: every tensor a block's session run returns to the engine that is not a boundary
 * (hidden-path) state, over all samples and passes of the block: with host statistics the
 * linears' whole input activations `[T, in]`, with graph statistics the `[in]` float64 sums and
 * ATV's `[T]` float64 distances. The boundary states (the block's outputs, which feed the next
 * block either way) are not counted. Averaged over the model's blocks. The seconds per block of
 * both settings come from the same runs (one thread, same process).
 */
import { join } from "node:path";
import { generateModel } from "../services/core/src/gen/genModel.js";
import { analyzeModel } from "../services/core/src/pipeline/modelAnalysis.js";
import { TensorData } from "../services/core/src/onnx/tensorData.js";
import { InferenceHost } from "../services/core/src/runtime/inferenceHost.js";
import { resolveSpec, type StatsMode } from "../services/core/src/pipeline/pruneSpec.js";
import { loadSamples } from "../services/core/src/pipeline/pruneModel.js";
import { planJob, planTargets, selectPrunable } from "../services/core/src/plan/jobPlan.js";
import { SampleFeeds } from "../services/core/src/pipeline/sampleFeeds.js";
import { BlockEngine } from "../services/core/src/pipeline/blockEngine.js";
import type { BenchLine } from "./benchLine.js";
import { MEDIUM } from "./methodsBench.js";

interface StatsRun {
  hostBytesPerBlock: number;
  weightBytesPerBlock: number;
  secondsPerBlock: number;
}

/** Runs every block of the model through the engine, counting the non-state bytes its runs return. */
async function runBlocks(modelPath: string, calibPath: string, workDir: string, stats: StatsMode): Promise<StatsRun> {
  const analysis = analyzeModel(modelPath);
  const data = new TensorData(analysis.loaded);
  const spec = resolveSpec({ model: modelPath, calib: calibPath, out: join(workDir, "stats-unused-out"), method: "atv", sparsity: 0.5, threads: 1, stats }, 1);
  const host = InferenceHost.start({ threads: 1, device: "cpu" });
  try {
    const samples = loadSamples(spec, analysis);
    const plan = planJob(spec, analysis, data, selectPrunable(spec, analysis));
    const states = new Set(analysis.plan.stateAfter.flat());
    let copied = 0;
    const run = host.run.bind(host);
    host.run = async (session, feeds, fetches) => {
      const out = await run(session, feeds, fetches);
      for (const name of fetches) if (!states.has(name)) copied += out[name]!.data.byteLength;
      return out;
    };
    const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
    const engine = new BlockEngine({ ...analysis, data, spec, host, samples, feeds, targets: planTargets(plan) });
    let input = await engine.initialStates();
    let seconds = 0;
    for (let b = 0; b < analysis.partition.numBlocks; b++) {
      const result = await engine.runBlock(b, input);
      seconds += result.report.seconds;
      input = result.next;
      engine.recycle(result.weights);
    }
    const blocks = analysis.partition.numBlocks;
    const weightBytes = plan.linears.reduce((a, l) => a + l.region.length, 0);
    return { hostBytesPerBlock: copied / blocks, weightBytesPerBlock: weightBytes / blocks, secondsPerBlock: seconds / blocks };
  } finally {
    await host.close();
    await data.close();
  }
}

export async function benchStats(workDir: string): Promise<BenchLine[]> {
  const gen = await generateModel({ outDir: join(workDir, "stats-medium"), force: true, ...MEDIUM });
  const host = await runBlocks(gen.modelPath, gen.calibPath, workDir, "host");
  const graph = await runBlocks(gen.modelPath, gen.calibPath, workDir, "graph");
  return [{
    bench: "host_bytes_per_block_over_weight_bytes", value: graph.hostBytesPerBlock / graph.weightBytesPerBlock, unit: "ratio",
    host_stats_value: host.hostBytesPerBlock / host.weightBytesPerBlock,
    graph_bytes_per_block: graph.hostBytesPerBlock, host_stats_bytes_per_block: host.hostBytesPerBlock, weight_bytes_per_block: graph.weightBytesPerBlock,
    graph_seconds_per_block: graph.secondsPerBlock, host_stats_seconds_per_block: host.secondsPerBlock,
    method: "atv", propagation: "sequential", threads: 1, ...MEDIUM,
  }];
}
