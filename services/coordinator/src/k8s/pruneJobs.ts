/**
 * `--watch-prunejobs`: the PruneJob controller wired to the coordinator's job path. Jobs are
 * created by createJob (SubmitJob's validation, allowed roots and start) and cancelled like
 * CancelJob does; a job no runner of this coordinator holds is recorded CANCELLED with its
 * event, so whoever follows its events sees it end.
 */
import { create } from "@bufbuild/protobuf";
import { JobEventSchema, JobState } from "../../../gen/atvprune/v1/job_pb.js";
import { createJob, type JobServiceDeps } from "../jobService.js";
import { isTerminal } from "../jobRunner.js";
import { loadKubeAccess } from "./kubeConfig.js";
import { PruneJobController } from "./pruneJobController.js";

export interface PruneJobsOptions {
  /** default: the in-cluster service account */
  kubeconfig?: string;
  /** default: the pod's namespace (or the kubeconfig context's) */
  namespace?: string;
  watchTimeoutSeconds?: number;
}

export async function startPruneJobs(opts: PruneJobsOptions, deps: Omit<JobServiceDeps, "token">, log: (m: string) => void): Promise<PruneJobController> {
  const access = loadKubeAccess({ kubeconfig: opts.kubeconfig, namespace: opts.namespace });
  const controller = new PruneJobController({
    kubeConfig: access.config, namespace: access.namespace, log, watchTimeoutSeconds: opts.watchTimeoutSeconds,
    deps: {
      submit: (spec, id) => createJob(deps, spec, id),
      getJob: (id) => deps.store.get(id),
      events: deps.events,
      async cancelJob(id, reason) {
        if (deps.cancelJob(id, reason)) return;
        let changed = false;
        await deps.store.update(id, (j) => {
          changed = !isTerminal(j.state);
          if (changed) { j.state = JobState.CANCELLED; j.reason = reason; j.updatedUnixMs = BigInt(Date.now()); }
        });
        if (changed) {
          await deps.events.publish(create(JobEventSchema, {
            jobId: id, timeUnixMs: BigInt(Date.now()), event: { case: "stateChanged", value: { state: JobState.CANCELLED, reason } },
          }));
        }
      },
    },
  });
  await controller.start();
  log(`watching PruneJobs in namespace ${access.namespace} (${access.server})`);
  return controller;
}
