/**
 * The coordinator's Prometheus metrics, in a registry of its own (no global state): job counts
 * by state and ready workers are read when scraped; block counters follow BlockFinished events.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { JobState } from "../../gen/atvprune/v1/job_pb.js";

export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly blocksPruned: Counter;
  readonly paramsPruned: Counter;
  /** each calibration token once per job (report.json's totals.tokens), when the job succeeds */
  readonly calibrationTokens: Counter;
  /** tokens run through blocks: tokens x blocks (report.json's totals.tokenPasses) */
  readonly calibrationTokenPasses: Counter;
  readonly blockDuration: Histogram;

  constructor(jobStates: () => JobState[], workersReady: () => number) {
    collectDefaultMetrics({ register: this.registry });
    this.blocksPruned = new Counter({ name: "atvp_blocks_pruned_total", help: "Decoder blocks pruned (each block once per job).", registers: [this.registry] });
    this.paramsPruned = new Counter({ name: "atvp_params_pruned_total", help: "Weights set to zero.", registers: [this.registry] });
    this.calibrationTokens = new Counter({ name: "atvp_calibration_tokens_total", help: "Calibration tokens of succeeded jobs, each counted once per job (report.json totals.tokens).", registers: [this.registry] });
    this.calibrationTokenPasses = new Counter({ name: "atvp_calibration_token_passes_total", help: "Calibration tokens passed through blocks: tokens x blocks (report.json totals.tokenPasses).", registers: [this.registry] });
    this.blockDuration = new Histogram({
      name: "atvp_block_duration_seconds", help: "Wall time to calibrate and prune one block.",
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900], registers: [this.registry],
    });
    new Gauge({
      name: "atvp_jobs", help: "Jobs known to this coordinator, by state.", labelNames: ["state"], registers: [this.registry],
      collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const s of [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]) counts.set(stateName(s), 0);
        for (const s of jobStates()) counts.set(stateName(s), (counts.get(stateName(s)) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "atvp_workers_ready", help: "Workers answering GetInfo.", registers: [this.registry],
      collect() { this.set(workersReady()); },
    });
  }
}

export function stateName(s: JobState): string {
  return JobState[s]?.replace(/^JOB_STATE_/, "") ?? "UNSPECIFIED";
}
