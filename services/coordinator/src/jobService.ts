/**
 * JobService over gRPC: validates requests (fields, allowed paths, bearer token), creates jobs
 * in the job store, starts their runners, and streams their events.
 */
import { randomBytes } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { clone, create } from "@bufbuild/protobuf";
import { JobEventSchema, JobSchema, JobService, JobSpecSchema, JobState, type Job, type JobSpec } from "../../gen/atvprune/v1/job_pb.js";
import { sep } from "node:path";
import { type ServerImpl, writeMessage, requireBearer, RpcError, checkJobFiles, resolveAllowedPath, validateJobSpec } from "../../rpc/index.js";
import { AtvpError, describeHolder, isModelFolder, liveLockHolder, lockPathOf, openFolderJob, type FolderJob } from "../../core/src/index.js";
import { isTerminal } from "./jobRunner.js";
import type { EventPort, JobStatePort, OutputLeasePort } from "./ports.js";
import { stateName } from "./coordinatorMetrics.js";

export interface JobServiceDeps {
  store: JobStatePort;
  events: EventPort;
  allowedRoots: string[];
  token?: string;
  /** one job per output folder (absent: not enforced, e.g. in tests of other fields) */
  leases?: OutputLeasePort;
  /** starts (or resumes) the runner of a stored job */
  startJob(job: Job): void;
  cancelJob(id: string, reason: string): boolean;
}

export function newJobId(): string {
  const t = new Date().toISOString().replace(/[-:T]/g, "").slice(0, 14);
  return `job-${t}-${randomBytes(4).toString("hex")}`;
}

/**
 * What SubmitJob does after authentication: checks the spec and its paths, stores the job
 * PENDING and starts it. `id` lets a caller that must not submit twice (the PruneJob controller)
 * choose it; a job with that id already stored is returned as it is, not run again.
 */
export async function createJob(deps: Pick<JobServiceDeps, "store" | "events" | "allowedRoots" | "startJob" | "leases">, requested: JobSpec | undefined, chosenId?: string): Promise<Job> {
  if (!requested) throw new RpcError(status.INVALID_ARGUMENT, "spec: is required");
  if (chosenId !== undefined) {
    const existing = await deps.store.get(chosenId);
    if (existing) return existing;
  }
  const id = chosenId ?? newJobId();
  validateJobSpec(requested);
  const spec = clone(JobSpecSchema, requested);
  const folder = modelFolderOf(spec, deps.allowedRoots);
  const paths = checkJobFiles({ model: folder?.decoderPath ?? spec.model, calib: spec.calib || undefined, out: spec.out, method: spec.method }, deps.allowedRoots);
  if (folder && (paths.out === folder.src || paths.out.startsWith(folder.src + sep) || folder.src.startsWith(paths.out + sep))) {
    throw new RpcError(status.INVALID_ARGUMENT, `spec.out: ${paths.out} overlaps the model folder ${folder.src}; choose a folder outside it`);
  }
  spec.model = folder?.src ?? paths.model;
  spec.calib = paths.calib ?? "";
  spec.out = paths.out;
  // Before the job exists, and whatever --force says: a second writer corrupts the first's
  // output. An `atvp prune` on this machine holds the folder's lock file, a job its lease.
  const local = liveLockHolder(spec.out);
  if (local) throw new RpcError(status.FAILED_PRECONDITION, `spec.out: ${spec.out} is being written by ${describeHolder(local)} (lock file ${lockPathOf(spec.out)}); wait for it or choose another --out folder`);
  await deps.leases?.acquire(spec.out, id);
  const now = BigInt(Date.now());
  const job = create(JobSchema, { id, spec, state: JobState.PENDING, createdUnixMs: now, updatedUnixMs: now });
  await deps.store.create(job);
  await deps.events.publish(create(JobEventSchema, {
    jobId: job.id, timeUnixMs: now, event: { case: "stateChanged", value: { state: JobState.PENDING } },
  }));
  deps.startJob(job);
  return job;
}

/**
 * A model folder (onnxruntime-genai or transformers.js) as the job's model: the folder itself
 * inside the roots, and its decoder (the file the job reads weights from) found and checked.
 */
function modelFolderOf(spec: JobSpec, roots: readonly string[]): (FolderJob & { decoderPath: string }) | undefined {
  if (!spec.model) return undefined;
  const dir = resolveAllowedPath(spec.model, roots, "spec.model", { mustExist: true });
  if (!isModelFolder(dir)) {
    if (spec.modelLayout || spec.modelDtype) throw new RpcError(status.INVALID_ARGUMENT, `spec.model_layout: ${spec.model} is not a model folder; model_layout and model_dtype are for folders`);
    return undefined;
  }
  try {
    return openFolderJob(dir, { layout: spec.modelLayout || undefined, dtype: spec.modelDtype || undefined });
  } catch (err) {
    if (err instanceof AtvpError) throw new RpcError(status.INVALID_ARGUMENT, `spec.model: ${err.message}`);
    throw err;
  }
}

export function jobServiceImpl(deps: JobServiceDeps): ServerImpl<typeof JobService> {
  const get = async (id: string): Promise<Job> => {
    if (!id) throw new RpcError(status.INVALID_ARGUMENT, "id: a job id is required");
    const job = await deps.store.get(id);
    if (!job) throw new RpcError(status.NOT_FOUND, `job ${id} not found`);
    return job;
  };
  return {
    async submitJob(req, call) {
      requireBearer(call, deps.token);
      const job = await createJob(deps, req.spec);
      return { job };
    },
    async getJob(req, call) {
      requireBearer(call, deps.token);
      return get(req.id);
    },
    async listJobs(_req, call) {
      requireBearer(call, deps.token);
      const jobs = await deps.store.list();
      jobs.sort((a, b) => Number(a.createdUnixMs - b.createdUnixMs));
      return { jobs };
    },
    async cancelJob(req, call) {
      requireBearer(call, deps.token);
      const job = await get(req.id);
      if (isTerminal(job.state)) throw new RpcError(status.FAILED_PRECONDITION, `job ${req.id} already ended ${stateName(job.state)}`);
      if (!deps.cancelJob(req.id, req.reason || "cancelled by request")) {
        // No runner in this process (e.g. still pending after a restart): record it directly.
        return deps.store.update(req.id, (j) => { j.state = JobState.CANCELLED; j.reason = req.reason || "cancelled by request"; });
      }
      return get(req.id);
    },
    async watchJob(req, call) {
      requireBearer(call, deps.token);
      await get(req.id);
      const abort = new AbortController();
      call.on("cancelled", () => abort.abort());
      for await (const event of deps.events.watch(req.id, { signal: abort.signal })) {
        if (abort.signal.aborted) break;
        await writeMessage(call, event);
      }
    },
  };
}
