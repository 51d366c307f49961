/**
 * PruneJob objects (atvprune.dev/v1alpha1) as a second way to submit jobs. Lists the PruneJobs
 * of one namespace, then watches from the list's resourceVersion (a 410 Gone relists), like
 * podDiscovery.ts does for pods, and reconciles each object:
 * - new: adds the finalizer, then runs the spec through SubmitJob's own path (createJob) with a
 *   job id derived from the object's uid, so a restarted coordinator that sees the object again
 *   finds the job already stored and never runs it twice; a spec the API refuses becomes a
 *   status condition (Accepted=False, reason InvalidSpec) and no job;
 * - while its job runs: the job's events are followed and written to the status subresource
 *   (state, blocks done, last event, output, conditions);
 * - deleted (deletionTimestamp set, held by the finalizer): the job is cancelled, and the
 *   finalizer removed once the job has stopped.
 */
import { CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from "@kubernetes/client-node";
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { status as grpcStatus } from "@grpc/grpc-js";
import { JobSpecSchema, JobState, type Job, type JobEvent, type JobSpec } from "../../../gen/atvprune/v1/job_pb.js";
import { RpcError } from "../../../rpc/index.js";
import { AtvpError } from "../../../core/src/index.js";
import { isTerminal } from "../jobRunner.js";
import { stateName } from "../coordinatorMetrics.js";
import type { EventPort } from "../ports.js";
import { KubeApiError, KubeGoneError, toKubeApiError } from "./errors.js";
import { untilWatchEnds, watchStream } from "./watchStream.js";

export const GROUP = "atvprune.dev";
export const VERSION = "v1alpha1";
export const PLURAL = "prunejobs";
export const FINALIZER = "atvprune.dev/job-stopped";

export interface PruneJobObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string; namespace?: string; uid?: string; resourceVersion?: string; generation?: number;
    deletionTimestamp?: string; finalizers?: string[];
  };
  spec?: Record<string, unknown>;
  status?: PruneJobStatus;
}

export interface PruneJobCondition {
  type: string;
  status: "True" | "False" | "Unknown";
  reason?: string;
  message?: string;
  lastTransitionTime?: string;
}

export interface PruneJobStatus {
  jobId?: string;
  state?: string;
  reason?: string;
  blocksDone?: number;
  blocksTotal?: number;
  lastEvent?: string;
  output?: string;
  observedGeneration?: number;
  conditions?: PruneJobCondition[];
}

export interface PruneJobDeps {
  /** SubmitJob's path (validation, allowed roots, store, start) with a chosen job id */
  submit(spec: JobSpec, id: string): Promise<Job>;
  getJob(id: string): Promise<Job | undefined>;
  /** cancels the job's runner, or records CANCELLED when no runner of this coordinator holds it */
  cancelJob(id: string, reason: string): Promise<void>;
  events: EventPort;
}

export interface PruneJobControllerOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  deps: PruneJobDeps;
  log?: (message: string) => void;
  /** wait before retrying a failed list or watch (default 1 s) */
  retryMs?: number;
  watchTimeoutSeconds?: number;
}

/** The job id of a PruneJob: derived from its uid, so every coordinator computes the same one. */
export function jobIdFor(uid: string): string {
  return `prunejob-${uid}`;
}

/** The object's spec as the API's JobSpec; field errors name spec.<field> like SubmitJob's. */
export function specFromObject(spec: Record<string, unknown> | undefined): JobSpec {
  if (!spec) throw new RpcError(grpcStatus.INVALID_ARGUMENT, "spec: is required");
  try {
    return fromJson(JobSpecSchema, spec as JsonValue);
  } catch (err) {
    throw new RpcError(grpcStatus.INVALID_ARGUMENT, `spec: ${(err as Error).message}`);
  }
}

export class PruneJobController {
  private readonly api: CustomObjectsApi;
  private readonly objects = new Map<string, PruneJobObject>();
  /** jobs whose events are being followed, by object name */
  private readonly followed = new Map<string, AbortController>();
  /** objects being reconciled (one at a time per object) */
  private readonly busy = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private resourceVersion: string | undefined;
  private closed = false;
  private loop: Promise<void> | undefined;
  private stopWatch: (() => void) | undefined;
  private readonly subject: string;

  constructor(private readonly opts: PruneJobControllerOptions) {
    this.api = opts.kubeConfig.makeApiClient(CustomObjectsApi);
    this.subject = `namespace ${opts.namespace} prunejobs.${GROUP}`;
  }

  private log(message: string): void {
    (this.opts.log ?? ((m: string) => process.stderr.write(`coordinator: ${m}\n`)))(message);
  }

  /** Lists once (a failure throws: missing CRD or RBAC should stop the start), then watches. */
  async start(): Promise<void> {
    await this.list();
    this.loop = this.run();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stopWatch?.();
    for (const a of this.followed.values()) a.abort();
    await Promise.race([Promise.allSettled([this.loop, ...this.busy.values()]), new Promise((r) => setTimeout(r, 2000).unref())]);
  }

  private async run(): Promise<void> {
    let mustList = false;
    while (!this.closed) {
      try {
        if (mustList) await this.list();
        mustList = false;
        await this.watchOnce();
      } catch (err) {
        if (this.closed) break;
        const e = toKubeApiError(err, this.subject, "watch");
        if (e instanceof KubeGoneError) {
          mustList = true;
          this.log(`${e.message}; listing the PruneJobs again`);
          continue;
        }
        this.log(`${e.message}; retrying`);
        await new Promise((r) => setTimeout(r, this.opts.retryMs ?? 1000).unref());
      }
    }
  }

  private async list(): Promise<void> {
    let list: { items: PruneJobObject[]; metadata?: { resourceVersion?: string } };
    try {
      list = await this.api.listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace: this.opts.namespace, plural: PLURAL });
    } catch (err) {
      throw toKubeApiError(err, this.subject, "list");
    }
    this.objects.clear();
    for (const o of list.items) this.objects.set(o.metadata.name, o);
    this.resourceVersion = list.metadata?.resourceVersion;
    for (const name of this.objects.keys()) this.schedule(name);
  }

  private async watchOnce(): Promise<void> {
    const path = `/apis/${GROUP}/${VERSION}/namespaces/${encodeURIComponent(this.opts.namespace)}/${PLURAL}`;
    const query = { resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds: this.opts.watchTimeoutSeconds ?? 300 };
    const watch = watchStream(this.opts.kubeConfig, path, query, (type, o) => this.apply(type, o as PruneJobObject));
    await untilWatchEnds(watch, (stop) => (this.stopWatch = stop), () => this.closed);
  }

  private apply(type: string, object: PruneJobObject): void {
    if (type === "ERROR") {
      const s = object as unknown as { code?: number; message?: string };
      if (s.code === 410) throw new KubeGoneError(this.subject, `watch: ERROR event (code 410): ${s.message ?? "too old resource version"}`);
      throw new KubeApiError(this.subject, `watch: ERROR event ${JSON.stringify(object)}`, { status: s.code });
    }
    const rv = object?.metadata?.resourceVersion;
    if (rv) this.resourceVersion = rv;
    if (type === "BOOKMARK") return;
    const name = object.metadata.name;
    if (type === "DELETED") {
      this.objects.delete(name);
      this.followed.get(name)?.abort();
      this.followed.delete(name);
      return;
    }
    this.objects.set(name, object);
    this.schedule(name);
  }

  /** Reconciles `name` now, or once more after the reconcile in progress. */
  private schedule(name: string): void {
    if (this.busy.has(name)) {
      this.again.add(name);
      return;
    }
    const p = this.reconcile(name).catch((err: unknown) => this.log(`PruneJob ${name}: ${(err as Error).message}`)).finally(() => {
      this.busy.delete(name);
      if (this.again.delete(name) && !this.closed) this.schedule(name);
    });
    this.busy.set(name, p);
  }

  private async reconcile(name: string): Promise<void> {
    const obj = this.objects.get(name);
    if (!obj || this.closed) return;
    const uid = obj.metadata.uid;
    if (!uid) throw new Error("the object has no metadata.uid");
    const jobId = obj.status?.jobId || jobIdFor(uid);
    const job = await this.opts.deps.getJob(jobId);

    if (obj.metadata.deletionTimestamp) {
      if (job && !isTerminal(job.state)) {
        this.log(`PruneJob ${name} deleted: cancelling job ${job.id}`);
        await this.opts.deps.cancelJob(job.id, `PruneJob ${this.opts.namespace}/${name} was deleted`);
        this.follow(name, job.id); // removes the finalizer once the job has stopped
        return;
      }
      await this.removeFinalizer(obj);
      return;
    }
    if (!job) {
      if (obj.status?.conditions?.some((c) => c.type === "Accepted" && c.status === "False") && obj.status.observedGeneration === obj.metadata.generation) return;
      // Submitted before, and the store no longer has the job: running it again is not ours to decide.
      if (obj.status?.jobId) return;
      await this.addFinalizer(obj);
      let submitted: Job;
      try {
        submitted = await this.opts.deps.submit(specFromObject(obj.spec), jobId);
      } catch (err) {
        if (!(err instanceof RpcError) && !(err instanceof AtvpError)) throw err;
        this.log(`PruneJob ${name}: spec refused: ${err.message}`);
        await this.patchStatus(name, {
          state: "FAILED", reason: err.message, lastEvent: `spec refused: ${err.message}`, observedGeneration: obj.metadata.generation,
          conditions: [condition("Accepted", "False", "InvalidSpec", err.message)],
        });
        await this.removeFinalizer(obj);
        return;
      }
      this.log(`PruneJob ${name}: running as job ${submitted.id}`);
      await this.patchStatus(name, { ...statusOf(submitted, "submitted"), observedGeneration: obj.metadata.generation, conditions: [condition("Accepted", "True", "Submitted", `job ${submitted.id}`)] });
    } else if (isTerminal(job.state)) {
      // Written once: the status patch comes back as MODIFIED, which must not write again.
      if (obj.status?.jobId !== job.id || obj.status.state !== stateName(job.state)) await this.patchStatus(name, statusOf(job, `job ${stateName(job.state)}`));
      await this.removeFinalizer(obj);
      return;
    }
    this.follow(name, jobId);
  }

  /** Follows the job's events into the object's status until the job ends (once per object). */
  private follow(name: string, jobId: string): void {
    if (this.followed.has(name)) return;
    const abort = new AbortController();
    this.followed.set(name, abort);
    void (async () => {
      try {
        for await (const event of this.opts.deps.events.watch(jobId, { signal: abort.signal })) {
          if (abort.signal.aborted) break;
          const job = await this.opts.deps.getJob(jobId);
          if (!job) continue;
          await this.patchStatus(name, statusOf(job, describeEvent(event)));
          if (isTerminal(job.state)) break;
        }
        // The job has stopped: reconcile writes its final status and drops the finalizer.
        if (!abort.signal.aborted) this.schedule(name);
      } catch (err) {
        if (!abort.signal.aborted) this.log(`PruneJob ${name}: following job ${jobId}: ${(err as Error).message}`);
      } finally {
        if (this.followed.get(name) === abort) this.followed.delete(name);
      }
    })();
  }

  private async patchStatus(name: string, status: PruneJobStatus): Promise<void> {
    const obj = this.objects.get(name);
    if (status.conditions && obj?.status?.conditions) {
      // Merge by type, keeping a condition's transition time while its status holds.
      const merged = new Map(obj.status.conditions.map((c) => [c.type, c]));
      for (const c of status.conditions) {
        const old = merged.get(c.type);
        merged.set(c.type, old && old.status === c.status ? { ...c, lastTransitionTime: old.lastTransitionTime } : c);
      }
      status = { ...status, conditions: [...merged.values()] };
    }
    try {
      const updated = await this.api.patchNamespacedCustomObjectStatus(
        { group: GROUP, version: VERSION, namespace: this.opts.namespace, plural: PLURAL, name, body: { status } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch)) as PruneJobObject;
      if (this.objects.has(name)) this.objects.set(name, updated);
    } catch (err) {
      throw toKubeApiError(err, `PruneJob ${this.opts.namespace}/${name}`, "patch status");
    }
  }

  private async addFinalizer(obj: PruneJobObject): Promise<void> {
    const finalizers = obj.metadata.finalizers ?? [];
    if (finalizers.includes(FINALIZER)) return;
    await this.patchFinalizers(obj, [...finalizers, FINALIZER]);
  }

  private async removeFinalizer(obj: PruneJobObject): Promise<void> {
    const current = this.objects.get(obj.metadata.name) ?? obj;
    const finalizers = current.metadata.finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) return;
    await this.patchFinalizers(current, finalizers.filter((f) => f !== FINALIZER));
  }

  private async patchFinalizers(obj: PruneJobObject, finalizers: string[]): Promise<void> {
    const name = obj.metadata.name;
    try {
      // resourceVersion makes the list replacement conditional: a concurrent change gets 409.
      const updated = await this.api.patchNamespacedCustomObject(
        { group: GROUP, version: VERSION, namespace: this.opts.namespace, plural: PLURAL, name, body: { metadata: { finalizers, resourceVersion: obj.metadata.resourceVersion } } },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch)) as PruneJobObject;
      if (this.objects.has(name)) this.objects.set(name, updated);
    } catch (err) {
      const e = toKubeApiError(err, `PruneJob ${this.opts.namespace}/${name}`, "patch metadata.finalizers");
      if (e.status === 404) return; // already gone
      throw e;
    }
  }
}

function condition(type: string, status: PruneJobCondition["status"], reason: string, message: string): PruneJobCondition {
  return { type, status, reason, message, lastTransitionTime: new Date().toISOString().replace(/\.\d+Z$/, "Z") };
}

function statusOf(job: Job, lastEvent: string): PruneJobStatus {
  const status: PruneJobStatus = {
    jobId: job.id, state: stateName(job.state), reason: job.reason, blocksDone: job.blocksDone, blocksTotal: job.blocksTotal, lastEvent,
  };
  if (job.state === JobState.SUCCEEDED) {
    status.output = job.spec?.out ?? "";
    status.conditions = [condition("Succeeded", "True", "JobSucceeded", `output in ${job.spec?.out}`)];
  } else if (job.state === JobState.FAILED || job.state === JobState.CANCELLED) {
    status.conditions = [condition("Succeeded", "False", job.state === JobState.FAILED ? "JobFailed" : "JobCancelled", job.reason)];
  }
  return status;
}

function describeEvent(e: JobEvent): string {
  switch (e.event.case) {
    case "stateChanged": return `state ${stateName(e.event.value.state)}${e.event.value.reason ? `: ${e.event.value.reason}` : ""}`;
    case "blockStarted": return `block ${e.event.value.block} (${e.event.value.label}) started on ${e.event.value.worker}`;
    case "blockFinished": return `block ${e.event.value.block} (${e.event.value.label}) finished on ${e.event.value.worker} in ${e.event.value.seconds.toFixed(2)} s`;
    case "shardAssigned": return `shard ${e.event.value.shard} (blocks ${e.event.value.firstBlock}-${e.event.value.endBlock - 1}) on ${e.event.value.worker}, attempt ${e.event.value.attempt}`;
    default: return "event";
  }
}
