/**
 * plan_predicted_over_measured: what `atvp plan` predicts for jobs the cluster bench has just
 * run, over what they took. The cost table is measured first in the same run, as
 * `atvp plan --calibrate --threads 1` does (core plan/costCalibration.ts), on generated models
 * of hidden 256-1,024; the jobs are the medium model (hidden 1,024), its 4x-tokens variant and
 * the large one (hidden 1,536), on one thread. The plan leaves out what a job pays once (start,
 * block 0's warm-up, writing the output), and it assumes each worker has a machine of its own:
 * here two replicas share two cores, so their ratio also shows what the sharing costs.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { measureCostTable, methodCost, shapeFromModel, type CostTable } from "../services/core/src/index.js";
import { planGrid } from "../services/coordinator/src/index.js";
import type { BenchLine } from "./benchLine.js";

export interface MeasuredJob {
  name: string;
  model: string;
  method: string;
  samples: number;
  tokensPerSample: number;
  workers: number;
  /** replicas per stage (1: the workers are stages of a chain) */
  replicas: number;
  seconds: number;
}

export async function planAccuracyLines(workDir: string, jobs: readonly MeasuredJob[]): Promise<BenchLine[]> {
  const dir = join(workDir, "plan-calibrate");
  mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  const table: CostTable = await measureCostTable({ methods: [...new Set(jobs.map((j) => j.method))], threads: 1, dir });
  const calibrateSeconds = (performance.now() - t0) / 1000;
  const cases = jobs.map((j) => {
    const plan = planGrid(shapeFromModel(j.model), {
      workers: j.workers, workerMemoryBytes: 64 * 2 ** 30, networkGbps: 10, replicas: j.replicas, method: j.method,
      samples: j.samples, tokensPerSample: j.tokensPerSample, propagation: "sequential",
    }, methodCost(table, j.method, "the bench's table"));
    return { name: j.name, predictedSeconds: plan.predicted.wallSeconds, measuredSeconds: j.seconds, ratio: plan.predicted.wallSeconds / j.seconds };
  });
  // One machine's worth of work at a time: one process, or stages that run one after another.
  const chained = cases.filter((_, i) => jobs[i]!.replicas === 1);
  const geomean = Math.exp(chained.reduce((a, c) => a + Math.log(c.ratio), 0) / chained.length);
  return [{
    bench: "plan_predicted_over_measured", value: geomean, unit: "ratio",
    worst: chained.reduce((w, c) => (Math.abs(Math.log(c.ratio)) > Math.abs(Math.log(w.ratio)) ? c : w)),
    cases, calibrateSeconds, costTable: table.methods,
    note: "atvp plan's predicted wall time over the measured one; value: the geometric mean over the jobs with one replica per stage. The plan leaves out a job's start and block 0's warm-up, and gives each replica a machine of its own (here two share two cores)",
  }];
}
