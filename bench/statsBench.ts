/**
 * host_bytes_per_block_over_weight_bytes (issue 10 §3): bytes copied out of onnxruntime for the
 * statistics per block, over the block's prunable weight bytes, for `--stats graph` (value) and
 * `--stats host` (host_stats_value), ATV sequential on the medium generated model.
 *
 * Counted as bench/blockRun.ts says (hostBytes: what a block's session runs return beside the
 * boundary states), averaged over the model's blocks. The seconds per block of
 * both settings come from the same runs (one thread, same process).
 */
import { join } from "node:path";
import { generateModel } from "../services/core/src/gen/genModel.js";
import type { StatsMode } from "../services/core/src/pipeline/pruneSpec.js";
import type { BenchLine } from "./benchLine.js";
import { runEngineBlocks, type BlockFigures } from "./blockRun.js";
import { MEDIUM } from "./methodsBench.js";

interface StatsRun {
  hostBytesPerBlock: number;
  weightBytesPerBlock: number;
  secondsPerBlock: number;
}

/** Every block of the model through the engine (bench/blockRun.ts), averaged over the blocks. */
async function runBlocks(modelPath: string, calibPath: string, stats: StatsMode): Promise<StatsRun> {
  const { blocks } = await runEngineBlocks({ model: modelPath, calib: calibPath, method: "atv", stats, device: "cpu", threads: 1 });
  const mean = (f: (b: BlockFigures) => number) => blocks.reduce((a, b) => a + f(b), 0) / blocks.length;
  return { hostBytesPerBlock: mean((b) => b.hostBytes), weightBytesPerBlock: mean((b) => b.weightBytes), secondsPerBlock: mean((b) => b.seconds) };
}

export async function benchStats(workDir: string): Promise<BenchLine[]> {
  const gen = await generateModel({ outDir: join(workDir, "stats-medium"), force: true, ...MEDIUM });
  const host = await runBlocks(gen.modelPath, gen.calibPath, "host");
  const graph = await runBlocks(gen.modelPath, gen.calibPath, "graph");
  return [{
    bench: "host_bytes_per_block_over_weight_bytes", value: graph.hostBytesPerBlock / graph.weightBytesPerBlock, unit: "ratio",
    host_stats_value: host.hostBytesPerBlock / host.weightBytesPerBlock,
    graph_bytes_per_block: graph.hostBytesPerBlock, host_stats_bytes_per_block: host.hostBytesPerBlock, weight_bytes_per_block: graph.weightBytesPerBlock,
    graph_seconds_per_block: graph.secondsPerBlock, host_stats_seconds_per_block: host.secondsPerBlock,
    method: "atv", propagation: "sequential", threads: 1, ...MEDIUM,
  }];
}
