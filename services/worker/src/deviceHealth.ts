/**
 * Whether a GPU worker still has its device: nvidia-smi is asked at an interval, and a GPU that
 * was there at start and no longer answers (driver gone, device fallen off the bus, XID errors
 * that make nvidia-smi fail) marks the worker NOT_SERVING in its gRPC health, so probes and the
 * coordinator stop sending it work. A CPU worker has no device to lose and is never probed.
 */
import { gpuMemoryBytes, type GpuQueryOptions } from "./gpuMemory.js";

export interface DeviceProbeOptions extends GpuQueryOptions {
  /** between checks (default 15 s) */
  intervalMs?: number;
}

export interface DeviceWatch {
  readonly present: boolean;
  stop(): void;
}

/**
 * Starts watching the device of a worker whose `device` found a GPU at start (`hadGpu`);
 * `onChange(present)` is called when the answer changes.
 */
export function watchDevice(hadGpu: boolean, onChange: (present: boolean) => void, log: (m: string) => void, opts: DeviceProbeOptions = {}): DeviceWatch {
  let present = hadGpu;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const check = async () => {
    const now = (await gpuMemoryBytes(opts)) !== undefined;
    if (stopped) return;
    if (now !== present) {
      present = now;
      log(now ? "the GPU answers again: serving" : `the GPU no longer answers ${opts.command ?? "nvidia-smi"}: not serving until it does`);
      onChange(now);
    }
    timer = setTimeout(() => void check(), opts.intervalMs ?? 15_000);
    timer.unref();
  };
  if (hadGpu) {
    timer = setTimeout(() => void check(), opts.intervalMs ?? 15_000);
    timer.unref();
  }
  return {
    get present() {
      return present;
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
