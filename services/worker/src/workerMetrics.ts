/**
 * The worker's Prometheus metrics, in a registry of its own (several workers can share a
 * process in tests and benchmarks without mixing their counts).
 */
import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly blocksPruned: Counter;
  readonly paramsPruned: Counter;
  readonly calibrationTokenPasses: Counter;
  /** data-plane bytes, direction "served" (to a downstream) or "received" (from an upstream) */
  readonly activationBytes: Counter<"direction">;
  readonly blockDuration: Histogram;

  constructor(workerId: string) {
    this.registry.setDefaultLabels({ worker: workerId });
    collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.blocksPruned = new Counter({ name: "atvp_blocks_pruned_total", help: "Decoder blocks this worker pruned", registers });
    this.paramsPruned = new Counter({ name: "atvp_params_pruned_total", help: "Weights this worker set to zero", registers });
    // Per block, as the coordinator's counter of the same name (tokens x blocks): a worker sees no whole job.
    this.calibrationTokenPasses = new Counter({ name: "atvp_calibration_token_passes_total", help: "Calibration tokens run through blocks on this worker (tokens x blocks)", registers });
    this.activationBytes = new Counter({
      name: "atvp_activation_bytes_streamed_total", help: "Boundary-state bytes this worker served to or received from other workers",
      labelNames: ["direction"], registers,
    });
    // Exported at zero from the start: rate() needs a sample before the first bytes.
    for (const direction of ["served", "received"]) this.activationBytes.inc({ direction }, 0);
    this.blockDuration = new Histogram({
      name: "atvp_block_duration_seconds", help: "Seconds to prune one block (calibration, masks, forward)",
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600], registers,
    });
  }
}
