/**
 * onnxruntime starts one OS thread per requested intra-op thread: asking for far more than the
 * machine's cores (`--threads 100000`) makes it stall creating them. More threads than cores
 * never helps, so the request is clamped to the cores, with a warning naming the flag.
 */
import { availableParallelism } from "node:os";

export function clampThreads(threads: number, warn: (message: string) => void, flag = "--threads", cores = availableParallelism()): number {
  if (threads <= cores) return threads;
  warn(`warning: ${flag} ${threads} is more than this machine's ${cores} cores; using ${cores}`);
  return cores;
}
