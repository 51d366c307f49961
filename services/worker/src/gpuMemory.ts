/**
 * The memory a cuda worker offers for shards is its GPU's, not the host's: the coordinator plans
 * shards within each worker's memory_bytes, and a GPU pod often has far more host RAM than
 * device memory. nvidia-smi is asked (bounded in time); without it the host memory is used, with
 * a warning, so the worker still starts.
 */
import { execFile } from "node:child_process";
import { totalmem } from "node:os";

export interface GpuQueryOptions {
  /** default "nvidia-smi" from PATH (tests point it at a fake) */
  command?: string;
  timeoutMs?: number;
}

/** Total memory of the first visible GPU in bytes; undefined without nvidia-smi or a GPU. */
export function gpuMemoryBytes(opts: GpuQueryOptions = {}): Promise<number | undefined> {
  return new Promise((resolve) => {
    execFile(opts.command ?? "nvidia-smi", ["--query-gpu=memory.total", "--format=csv,noheader,nounits"],
      { timeout: opts.timeoutMs ?? 5000, maxBuffer: 64 * 1024 }, (err, stdout) => {
        if (err) return resolve(undefined);
        // One line per GPU, in MiB. onnxruntime's CUDA provider uses device 0 (the first visible).
        const mib = Number(String(stdout).split("\n")[0]?.trim());
        resolve(Number.isFinite(mib) && mib > 0 ? mib * 1024 * 1024 : undefined);
      });
  });
}

/**
 * What GetInfo reports as memory_bytes: the GPU's for "cuda", and for "auto" when a GPU is
 * there (auto tries CUDA first); the host's otherwise, with a warning when cuda was asked for.
 */
export async function deviceMemoryBytes(device: "cpu" | "cuda" | "auto", warn: (message: string) => void, opts: GpuQueryOptions = {}): Promise<number> {
  if (device === "cpu") return totalmem();
  const gpu = await gpuMemoryBytes(opts);
  if (gpu !== undefined) return gpu;
  if (device === "cuda") warn(`warning: device cuda but ${opts.command ?? "nvidia-smi"} reported no GPU memory; offering host memory (${totalmem()} bytes) to the planner`);
  return totalmem();
}
