/**
 * End-to-end prune timings on generated models (small, medium) and the peak memory of pruning a
 * model of over 1 GB of weights, as a fraction of its weight bytes (blocks stream from disk).
 */
import { execFile, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { generateModel, type GenModelOptions } from "../services/core/src/gen/genModel.js";
import type { BenchLine } from "./benchLine.js";

const CHILD = fileURLToPath(new URL("./pruneChild.js", import.meta.url));

/** What bench/pruneChild.ts prints. */
export interface ChildPrune {
  seconds: number;
  peakRssBytes: number;
  /** CPU seconds of the whole process (every thread) during the prune */
  cpuSeconds: number;
  /** CPU seconds of its main thread during the prune */
  mainThreadCpuSeconds: number;
}

export function pruneInChild(spec: object): ChildPrune {
  const r = spawnSync(process.execPath, [CHILD, JSON.stringify(spec)], { encoding: "utf8", maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`prune failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").pop()!);
}

/** pruneInChild without blocking this process, so that several can run at once. */
export async function pruneInChildAsync(spec: object): Promise<ChildPrune> {
  const { stdout } = await promisify(execFile)(process.execPath, [CHILD, JSON.stringify(spec)], { encoding: "utf8", maxBuffer: 1 << 24 });
  return JSON.parse(stdout.trim().split("\n").pop()!);
}

export async function benchPrune(workDir: string): Promise<BenchLine[]> {
  const lines: BenchLine[] = [];
  const cases: Array<[string, Omit<GenModelOptions, "outDir">]> = [
    ["small", { layers: 4, hidden: 256, fused: true, fp16: true, samples: 16 }],
    ["medium", { layers: 8, hidden: 1024, samples: 16, seqLen: 128, imageTokens: 64 }],
  ];
  for (const [name, opts] of cases) {
    const gen = await generateModel({ outDir: join(workDir, name), force: true, ...opts });
    const r = pruneInChild({ model: gen.modelPath, calib: gen.calibPath, method: "atv", sparsity: 0.5, out: join(workDir, `${name}-out`), force: true });
    lines.push({ bench: `prune_seconds_${name}`, value: r.seconds, unit: "s", weightBytes: gen.weightBytes, method: "atv", ...opts });
  }
  const big = await generateModel({ outDir: join(workDir, "large"), force: true, layers: 10, hidden: 1536, samples: 16, seqLen: 128, imageTokens: 64 });
  const r = pruneInChild({ model: big.modelPath, calib: big.calibPath, method: "atv", sparsity: 0.5, out: join(workDir, "large-out"), force: true });
  lines.push({ bench: "prune_seconds_large", value: r.seconds, unit: "s", weightBytes: big.weightBytes });
  lines.push({ bench: "prune_peak_rss_over_model_bytes", value: r.peakRssBytes / big.weightBytes, unit: "ratio", peakRssBytes: r.peakRssBytes, weightBytes: big.weightBytes });
  return lines;
}
