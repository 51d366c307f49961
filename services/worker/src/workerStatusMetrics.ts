/**
 * The worker's state as gauges, read when scraped: the device memory it offers the planner (the
 * GPU's on a GPU worker: the dashboard's "GPU memory per worker"), whether its device answers,
 * and how many shards it runs (a worker with shards running and no block pruned for N minutes
 * is stalled, which the alert rules compute with atvp_blocks_pruned_total).
 */
import { Gauge, type Registry } from "prom-client";

export interface WorkerStatusSource {
  device: string;
  memoryBytes: number;
  deviceUp(): boolean;
  shardsRunning(): number;
}

export function registerWorkerStatusMetrics(registry: Registry, source: WorkerStatusSource): void {
  const registers = [registry];
  new Gauge({
    name: "atvp_worker_device_memory_bytes", help: "Memory this worker offers for shards: the GPU's for a cuda worker, else the host's.",
    labelNames: ["device"], registers,
    collect() { this.set({ device: source.device }, source.memoryBytes); },
  });
  new Gauge({
    name: "atvp_worker_device_up", help: "1 while the worker's device answers (always 1 on a CPU worker), 0 after it was lost.", registers,
    collect() { this.set(source.deviceUp() ? 1 : 0); },
  });
  new Gauge({
    name: "atvp_worker_shards_running", help: "Shards running on this worker.", registers,
    collect() { this.set(source.shardsRunning()); },
  });
}
