/** Messages between InferenceHost (main thread) and inferenceThread (worker thread). */
import type { WireTensor } from "./wireTensor.js";

export type ExecutionDevice = "cpu" | "cuda";

export type HostRequest =
  | { id: number; op: "load"; model: Uint8Array; device: ExecutionDevice; threads: number; bound: Record<string, WireTensor>; quiet?: boolean }
  | { id: number; op: "run"; session: number; feeds: Record<string, WireTensor>; fetches: string[] }
  | { id: number; op: "bind"; session: number; tensors: Record<string, WireTensor> }
  | { id: number; op: "unbind"; session: number }
  | { id: number; op: "release"; session: number }
  | { id: number; op: "close" };

export type HostResponse =
  | { id: number; ok: true; session?: number; inputNames?: string[]; outputNames?: string[]; outputs?: Record<string, WireTensor> }
  | { id: number; ok: false; error: string };
