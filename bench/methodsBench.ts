/**
 * SparseGPT against Wanda on the medium generated model (the same model as pruneBench's
 * "medium"), both in their own process in one run: the time ratio, and SparseGPT's peak memory
 * over the weight bytes of one block (its in×in Hessians are what grows). Then SparseGPT with
 * two solve threads (--mask-threads 2) against one, and TAMP likewise (its densities and AMIA
 * subsets on the threads), same bytes checked. Then SparseGPT on one block whose MLP is 3.5 times
 * its width, as in Llama-3-8B, where the MLP input's factorization is most of the block: one
 * thread, two, and two that never factor as a team, alternated.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generateModel, type GenModelOptions } from "../services/core/src/gen/genModel.js";
import { analyzeModel } from "../services/core/src/pipeline/modelAnalysis.js";
import { elementSize } from "../services/core/src/onnx/dtype.js";
import { sparseGptWorkingBytes } from "../services/core/src/methods/sparseGpt.js";
import type { BenchLine } from "./benchLine.js";
import { pruneInChild } from "./pruneBench.js";

export const MEDIUM: Omit<GenModelOptions, "outDir"> = { layers: 8, hidden: 1024, samples: 16, seqLen: 128, imageTokens: 64 };
const WIDE_MLP: Omit<GenModelOptions, "outDir"> = { layers: 1, hidden: 1024, intermediate: 3584, samples: 16, seqLen: 128, imageTokens: 64 };

export async function benchMethods(workDir: string): Promise<BenchLine[]> {
  const gen = await generateModel({ outDir: join(workDir, "methods-medium"), force: true, ...MEDIUM });
  const run = (method: string, maskThreads = 1) => pruneInChild({ model: gen.modelPath, calib: gen.calibPath, method, sparsity: 0.5, maskThreads, out: join(workDir, `methods-${method}-${maskThreads}-out`), force: true });
  const wanda = run("wanda");
  const sparsegpt = run("sparsegpt");
  const threaded = run("sparsegpt", 2);
  const tamp = run("tamp");
  const tampThreaded = run("tamp", 2);
  const data = (method: string, threads: number) => readFileSync(join(workDir, `methods-${method}-${threads}-out`, "model.onnx.data"));
  for (const method of ["sparsegpt", "tamp"]) {
    if (!data(method, 1).equals(data(method, 2))) throw new Error(`${method}: model.onnx.data differs between --mask-threads 1 and 2`);
  }
  const wide = await benchWideMlp(workDir);
  const block = analyzeModel(gen.modelPath).partition.blockLinears[0]!;
  const blockBytes = block.reduce((a, l) => a + l.inDim * l.outDim * elementSize(l.dataType, l.weight), 0);
  return [
    { bench: "sparsegpt_vs_wanda_seconds", value: sparsegpt.seconds / wanda.seconds, unit: "ratio", sparsegptSeconds: sparsegpt.seconds, wandaSeconds: wanda.seconds, ...MEDIUM },
    {
      bench: "sparsegpt_threads2_speedup", value: sparsegpt.seconds / threaded.seconds, unit: "ratio",
      oneThreadSeconds: sparsegpt.seconds, twoThreadsSeconds: threaded.seconds, twoThreadsPeakRssBytes: threaded.peakRssBytes,
      twoThreadsPlannerWorkingBytesOverBlockBytes: sparseGptWorkingBytes(block, 2) / blockBytes,
    },
    wide,
    { bench: "tamp_threads2_speedup", value: tamp.seconds / tampThreaded.seconds, unit: "ratio", oneThreadSeconds: tamp.seconds, twoThreadsSeconds: tampThreaded.seconds },
    {
      bench: "hessian_peak_rss_over_block_bytes", value: sparsegpt.peakRssBytes / blockBytes, unit: "ratio",
      peakRssBytes: sparsegpt.peakRssBytes, blockBytes, wandaPeakRssOverBlockBytes: wanda.peakRssBytes / blockBytes,
      plannerWorkingBytesOverBlockBytes: sparseGptWorkingBytes(block) / blockBytes,
    },
  ];
}

/** sparsegpt_threads2_speedup_wide_mlp, and what the factorization teams give (two rounds, the best of each). */
async function benchWideMlp(workDir: string): Promise<BenchLine> {
  const gen = await generateModel({ outDir: join(workDir, "methods-wide-mlp"), force: true, ...WIDE_MLP });
  const out = (label: string) => join(workDir, `methods-wide-mlp-${label}-out`);
  const run = (label: string, maskThreads: number, solveTeamInputs?: number) =>
    pruneInChild({ model: gen.modelPath, calib: gen.calibPath, method: "sparsegpt", sparsity: 0.5, maskThreads, out: out(label), force: true, solveTeamInputs });
  const best = { one: Infinity, two: Infinity, noTeams: Infinity };
  for (let round = 0; round < 2; round++) {
    best.one = Math.min(best.one, run("1", 1).seconds);
    best.two = Math.min(best.two, run("2", 2).seconds);
    best.noTeams = Math.min(best.noTeams, run("2-no-teams", 2, Number.MAX_SAFE_INTEGER).seconds);
  }
  const data = (label: string) => readFileSync(join(out(label), "model.onnx.data"));
  if (!data("1").equals(data("2")) || !data("1").equals(data("2-no-teams"))) throw new Error("sparsegpt on the wide-MLP block: model.onnx.data differs between thread counts");
  return {
    bench: "sparsegpt_threads2_speedup_wide_mlp", value: best.one / best.two, unit: "ratio",
    oneThreadSeconds: best.one, twoThreadsSeconds: best.two, twoThreadsNoTeamsSeconds: best.noTeams,
    teamGain: best.noTeams / best.two, ...WIDE_MLP,
  };
}
