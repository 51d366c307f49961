/**
 * What the alert rules need beyond CoordinatorMetrics: a counter of jobs that ended FAILED (a
 * gauge of jobs by state cannot say "one more failed in the last 10 minutes" once old jobs are
 * forgotten) and, per unfinished job, when it last progressed (state change or block done), so
 * a job stuck for N minutes is one comparison with time().
 */
import { Counter, Gauge, type Registry } from "prom-client";
import { JobState, type Job } from "../../gen/atvprune/v1/job_pb.js";
import { isTerminal } from "./jobRunner.js";

export class JobProgressMetrics {
  private readonly failed: Counter;
  private readonly lastProgress: Gauge<"job_id">;
  private readonly states = new Map<string, JobState>();

  constructor(registry: Registry) {
    this.failed = new Counter({ name: "atvp_jobs_failed_total", help: "Jobs that ended FAILED.", registers: [registry] });
    this.lastProgress = new Gauge({
      name: "atvp_job_last_progress_timestamp_seconds", help: "Unix time of the last state change or finished block of each PENDING or RUNNING job.",
      labelNames: ["job_id"], registers: [registry],
    });
  }

  /** Called with every job the coordinator stores or reads back. */
  observe(job: Job): void {
    const before = this.states.get(job.id);
    this.states.set(job.id, job.state);
    if (job.state === JobState.FAILED && before !== undefined && before !== JobState.FAILED) this.failed.inc();
    if (isTerminal(job.state)) this.lastProgress.remove({ job_id: job.id });
    else this.lastProgress.set({ job_id: job.id }, Number(job.updatedUnixMs || job.createdUnixMs) / 1000);
  }
}
