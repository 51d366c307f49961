/**
 * RunProfile: the sparsity profile's pre-pass for a whole job on this worker (every block, dense
 * propagation, one block in memory at a time), as `atvp prune` runs it, so the facts and hence the
 * targets are the same bits. It writes nothing: a worker lost midway is replaced by a rerun.
 */
import { BlockEngine, InferenceHost, InvalidArgumentError, jobProfile, profileFacts, type JobPlan } from "../../../core/src/index.js";
import { openShardJob } from "./shardJob.js";

export async function runProfile(plan: JobPlan, worker: { threads: number; device: "cpu" | "cuda" | "auto"; warn?: (m: string) => void }): Promise<number[][]> {
  const job = await openShardJob(plan, worker, "profile");
  let host: InferenceHost | undefined;
  try {
    const prePass = jobProfile(job.spec).prePass;
    if (!prePass) throw new InvalidArgumentError("plan.sparsityProfile", `${plan.sparsityProfile} has no pre-pass`);
    host = InferenceHost.start({ threads: worker.threads, device: worker.device, warn: worker.warn });
    const engine = new BlockEngine({ ...job.analysis, data: job.data, spec: job.spec, host, samples: job.samples, feeds: job.feeds, targets: job.targets });
    return await profileFacts(engine, prePass, job.analysis.partition.numBlocks);
  } finally {
    await host?.close().catch(() => {});
    await job.data.close().catch(() => {});
  }
}
