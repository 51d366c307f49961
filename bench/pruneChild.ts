/**
 * Runs one prune in its own process and prints its seconds and peak RSS (VmHWM), so that the
 * memory figure is the pruner's alone.
 */
import { readFileSync } from "node:fs";
import { pruneModel } from "../services/core/src/pipeline/pruneModel.js";

const spec = JSON.parse(process.argv[2]!);
const t0 = performance.now();
await pruneModel(spec);
const seconds = (performance.now() - t0) / 1000;
const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
console.log(JSON.stringify({ seconds, peakRssBytes: Number(hwm) * 1024 }));
