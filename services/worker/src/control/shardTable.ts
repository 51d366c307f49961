/**
 * The shards running on this worker and where each job's work dir is. The control plane adds
 * and removes runs; the data plane sees it only as a ShardDirectory (where a job's states are,
 * and whether a run here will produce them).
 */
import type { ShardDirectory } from "../dataplane/dataService.js";
import type { ShardRun } from "./shardRunner.js";

export class ShardTable implements ShardDirectory {
  private readonly runs = new Map<string, { run: ShardRun; finished: Promise<void> }>();
  /** job id -> work dir, remembered after its shards end so PullStates can serve the files */
  private readonly workDirs = new Map<string, string>();
  private readonly listeners = new Set<() => void>();

  get(jobId: string, shard: number) {
    return this.runs.get(key(jobId, shard));
  }

  add(run: ShardRun, finished: Promise<void>): void {
    this.runs.set(key(run.jobId, run.shard), { run, finished });
    this.workDirs.set(run.jobId, run.workDir);
    for (const l of [...this.listeners]) l();
  }

  /** Resolves when the next shard is added, or when the signal aborts. */
  nextAdd(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.listeners.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      this.listeners.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  delete(run: ShardRun): void {
    const k = key(run.jobId, run.shard);
    if (this.runs.get(k)?.run === run) this.runs.delete(k);
  }

  all(): ShardRun[] {
    return [...this.runs.values()].map((r) => r.run);
  }

  finishedAll(): Promise<unknown> {
    return Promise.allSettled([...this.runs.values()].map((r) => r.finished));
  }

  workDir(jobId: string): string | undefined {
    return this.workDirs.get(jobId);
  }

  /** The running shard (of replica `replica`) whose last block produces the states entering `block`. */
  producer(jobId: string, block: number, replica = 0): { run: ShardRun; finished: Promise<void> } | undefined {
    return [...this.runs.values()].find((r) => r.run.jobId === jobId && r.run.endBlock === block && r.run.slice.replica === replica);
  }
}

function key(jobId: string, shard: number): string {
  return `${jobId}\u0000${shard}`;
}

