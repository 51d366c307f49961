/**
 * `npm run bench`: runs every benchmark in one process run and prints one JSON line per figure
 * ({"bench", "value", "unit", ...}), so ratios are measured under the same conditions.
 * Generated models go to .work/bench (or $ATVP_BENCH_DIR) and are left there for inspection.
 */
import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import type { BenchLine } from "./benchLine.js";
import { benchMask } from "./maskBench.js";
import { benchMaskBlock } from "./maskBlockBench.js";
import { benchMachineScaling } from "./machineScaling.js";
import { benchCalibration } from "./calibBench.js";
import { benchPrune } from "./pruneBench.js";
import { benchStream } from "./streamBench.js";
import { benchCluster } from "./clusterBench.js";
import { benchMethods } from "./methodsBench.js";
import { benchStats } from "./statsBench.js";
import { benchPlanScale } from "./planScaleBench.js";

const workDir = resolve(process.env.ATVP_BENCH_DIR ?? ".work/bench");
mkdirSync(workDir, { recursive: true });
const only = process.argv.slice(2);
const BENCHES: Array<[string, () => Promise<BenchLine[]>]> = [
  ["machine", benchMachineScaling],
  ["mask", async () => [...(await benchMask()), ...(await benchMaskBlock())]],
  ["calib", () => benchCalibration(workDir)],
  ["prune", () => benchPrune(workDir)],
  ["stream", () => benchStream()],
  ["cluster", () => benchCluster(workDir)],
  ["methods", () => benchMethods(workDir)],
  ["stats", () => benchStats(workDir)],
  ["planscale", () => benchPlanScale()],
];

for (const [name, bench] of BENCHES) {
  if (only.length > 0 && !only.includes(name)) continue;
  for (const line of await bench()) console.log(JSON.stringify(line));
}
