/**
 * CPU seconds of another process and of its main thread, from /proc (Linux): the cluster bench
 * compares what the replicas burn in all with what one process burns on the same work.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";

export interface CpuSeconds {
  /** user + system seconds of every thread, the exited ones included */
  process: number;
  /** user + system seconds of the main thread (JavaScript: statistics, masks, exchange, gRPC) */
  mainThread: number;
}

function clockTicksPerSecond(): number {
  const r = spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" });
  const hz = Number(r.stdout?.trim());
  return Number.isFinite(hz) && hz > 0 ? hz : 100;
}

/** utime + stime of a /proc stat line (fields 14 and 15; the command name may hold spaces). */
function statTicks(path: string): number {
  const stat = readFileSync(path, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

export function cpuSecondsOf(pid: number, hz = clockTicksPerSecond()): CpuSeconds {
  return { process: statTicks(`/proc/${pid}/stat`) / hz, mainThread: statTicks(`/proc/${pid}/task/${pid}/stat`) / hz };
}

export function cpuDelta(after: CpuSeconds, before: CpuSeconds): CpuSeconds {
  return { process: after.process - before.process, mainThread: after.mainThread - before.mainThread };
}

/** This process's CPU seconds (every thread) and its calling thread's, for a child to report. */
export function ownCpuSeconds(): CpuSeconds {
  const all = process.cpuUsage();
  const main = process.threadCpuUsage();
  return { process: (all.user + all.system) / 1e6, mainThread: (main.user + main.system) / 1e6 };
}
