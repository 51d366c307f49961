/**
 * What the coordinator needs from its state and event stores (NATS JetStream KV and stream in
 * production); kept as interfaces so the job logic does not depend on the transport.
 */
import type { Job, JobEvent } from "../../gen/atvprune/v1/job_pb.js";

export interface JobStatePort {
  create(job: Job): Promise<unknown>;
  get(id: string): Promise<Job | undefined>;
  /** compare-and-set update: `mutate` may run more than once on conflicts */
  update(id: string, mutate: (job: Job) => void): Promise<Job>;
  list(): Promise<Job[]>;
}

export interface EventPort {
  /** ordered; buffered while the store is unreachable */
  publish(event: JobEvent): Promise<unknown> | unknown;
  /** history, then live events; ends after the terminal state event */
  watch(jobId: string, options?: { signal?: AbortSignal }): AsyncIterable<JobEvent>;
  /** the events published so far, no live ones (bounded) */
  history?(jobId: string, options?: { timeoutMs?: number }): Promise<JobEvent[]>;
}

export interface OutputLeasePort {
  /** takes the lease on a (real) output folder for a new job; OutputLockedError naming the holder when taken */
  acquire(out: string, jobId: string): Promise<void>;
}
