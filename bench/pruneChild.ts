/**
 * Runs one prune in its own process and prints its seconds, peak RSS (VmHWM) and CPU seconds,
 * so that the memory and CPU figures are the pruner's alone. The spec's `solveTeamInputs`, a
 * bench setting and not a prune option, sets solvePoolLimits.teamInputs (a huge value: no teams).
 */
import { readFileSync } from "node:fs";
import { pruneModel } from "../services/core/src/pipeline/pruneModel.js";
import { solvePoolLimits } from "../services/core/src/prune/solvePool.js";
import { cpuDelta, ownCpuSeconds } from "./cpuTime.js";

const { solveTeamInputs, ...spec } = JSON.parse(process.argv[2]!);
if (solveTeamInputs !== undefined) solvePoolLimits.teamInputs = solveTeamInputs;
const cpu0 = ownCpuSeconds();
const t0 = performance.now();
await pruneModel(spec);
const seconds = (performance.now() - t0) / 1000;
const cpu = cpuDelta(ownCpuSeconds(), cpu0);
const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
console.log(JSON.stringify({ seconds, peakRssBytes: Number(hwm) * 1024, cpuSeconds: cpu.process, mainThreadCpuSeconds: cpu.mainThread }));
