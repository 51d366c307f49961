/**
 * The coordinator process: JobService on gRPC, job state and events in NATS JetStream, workers
 * from a static list (or Kubernetes discovery), Prometheus metrics. On start it picks up the
 * jobs a previous coordinator left RUNNING or PENDING and resumes them from their checkpoints.
 */
import * as grpc from "@grpc/grpc-js";
import { JobService, JobState, type Job } from "../../gen/atvprune/v1/job_pb.js";
import { addService, addHealthAndReflection, GRPC_OPTIONS, serverCredentials, type TlsConfig } from "../../rpc/index.js";
import { startMetricsServer, type MetricsServer } from "../../observability/index.js";
import { CoordinatorMetrics } from "./coordinatorMetrics.js";
import { JobProgressMetrics } from "./jobProgressMetrics.js";
import { JobRunner, isTerminal } from "./jobRunner.js";
import { jobServiceImpl } from "./jobService.js";
import { WorkerPool } from "./workerPool.js";
import { connectNats, type NatsAuth } from "./state/natsConnection.js";
import { JobStore } from "./state/jobStore.js";
import { EventLog } from "./state/eventLog.js";
import { OutputLeases } from "./state/outputLeases.js";
import type { KubernetesOptions, KubernetesWorkers } from "./k8s/kubernetesWorkers.js";
import type { PruneJobsOptions } from "./k8s/pruneJobs.js";

export interface CoordinatorOptions {
  host?: string;
  port?: number;
  nats: string;
  natsAuth?: NatsAuth;
  /** static worker addresses; with `kubernetes` they are optional and join the discovered ones */
  workers: string[];
  /** find workers as pods through the Kubernetes API (and optionally scale their StatefulSet) */
  kubernetes?: KubernetesOptions;
  workRoot: string;
  allowedRoots: string[];
  token?: string;
  /** TLS of the JobService server */
  tls?: TlsConfig;
  /** TLS of the connections to workers (client side) */
  workerTls?: TlsConfig;
  /** token sent to workers (default: `token`, one shared secret for the cluster) */
  workerToken?: string;
  metricsPort?: number;
  /** run PruneJob objects of a namespace as jobs (--watch-prunejobs) */
  pruneJobs?: PruneJobsOptions;
  log?: (message: string) => void;
  reassignTimeoutMs?: number;
  /** an output folder's lease lapses when not renewed for this long (default 120 s) */
  leaseTtlMs?: number;
  /** a worker silent this long on a shard's stream (no heartbeat, no progress) is declared lost; default 120 s */
  stallTimeoutMs?: number;
  /** keep every job's work folder (by default SUCCEEDED and CANCELLED jobs' are removed) */
  keepWork?: boolean;
}

export interface CoordinatorHandle {
  address: string;
  metricsPort?: number;
  pool: WorkerPool;
  close(): Promise<void>;
}

export async function startCoordinator(opts: CoordinatorOptions): Promise<CoordinatorHandle> {
  const log = opts.log ?? ((m: string) => process.stderr.write(`coordinator: ${m}\n`));
  const nc = await connectNats({ servers: opts.nats, name: "atvp-coordinator", ...opts.natsAuth });
  const store = await JobStore.open(nc);
  const events = await EventLog.open(nc);
  const leases = await OutputLeases.open(nc, { ttlMs: opts.leaseTtlMs }, log);
  const pool = new WorkerPool(opts.workers, { tls: opts.workerTls, token: opts.workerToken ?? opts.token });
  let kube: KubernetesWorkers | undefined;
  if (opts.kubernetes) {
    // Loaded only in this mode: the client is large, and static clusters never need it.
    const { startKubernetesWorkers } = await import("./k8s/kubernetesWorkers.js");
    try {
      kube = await startKubernetesWorkers(opts.kubernetes, pool, opts.workers, log);
    } catch (err) {
      pool.close();
      await events.close();
      await store.close();
      await nc.close();
      throw err;
    }
  }
  pool.start();
  const runners = new Map<string, JobRunner>();
  const knownStates = new Map<string, JobState>();
  const metrics = new CoordinatorMetrics(() => [...knownStates.values()], () => pool.ready().length);
  const progress = new JobProgressMetrics(metrics.registry);
  const trackingStore = {
    create: async (job: Job) => { knownStates.set(job.id, job.state); progress.observe(job); return store.create(job); },
    get: (id: string) => store.get(id),
    update: async (id: string, mutate: (job: Job) => void) => {
      const job = await store.update(id, mutate);
      knownStates.set(id, job.state);
      progress.observe(job);
      return job;
    },
    list: async () => {
      const jobs = await store.list();
      for (const j of jobs) { knownStates.set(j.id, j.state); progress.observe(j); }
      return jobs;
    },
  };
  // A lease held by a job that ended (or is unknown) is free to take.
  const isLive = async (id: string) => {
    const held = await trackingStore.get(id).catch(() => undefined);
    return held !== undefined && !isTerminal(held.state);
  };
  const startJob = (job: Job, resume = false) => {
    if (runners.has(job.id)) return;
    const lease = leases.keep(job.spec!.out, job.id, isLive);
    const runner = new JobRunner({
      store: trackingStore, events, pool, metrics, workRoot: opts.workRoot, log, reassignTimeoutMs: opts.reassignTimeoutMs,
      stallTimeoutMs: opts.stallTimeoutMs, keepWork: opts.keepWork,
      acquireWorkers: kube?.acquireWorkers,
    }, job.id, job.spec!, resume);
    runners.set(job.id, runner);
    kube?.jobsRunning(runners.size);
    void runner.run().finally(async () => {
      runners.delete(job.id);
      kube?.jobsRunning(runners.size);
      // A job left RUNNING for the next coordinator keeps its lease until that one renews it.
      const ended = await trackingStore.get(job.id).then((j) => j === undefined || isTerminal(j.state), () => false);
      if (ended) await lease.release();
      else lease.stop();
    });
  };

  const server = new grpc.Server(GRPC_OPTIONS);
  const jobDeps = {
    store: trackingStore, events, allowedRoots: opts.allowedRoots, token: opts.token,
    leases: { acquire: (out: string, jobId: string) => leases.acquire(out, jobId, isLive) },
    startJob: (job: Job) => startJob(job),
    cancelJob: (id: string, reason: string) => {
      const r = runners.get(id);
      r?.cancel(reason);
      return r !== undefined;
    },
  };
  addService(server, JobService, jobServiceImpl(jobDeps));
  const health = addHealthAndReflection(server, [JobService]);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${opts.host ?? "127.0.0.1"}:${opts.port ?? 0}`, serverCredentials(opts.tls), (err, p) => (err ? reject(err) : resolve(p))));
  const address = `${opts.host ?? "127.0.0.1"}:${port}`;

  // A restarted coordinator resumes what its predecessor left running.
  for (const job of await trackingStore.list()) {
    if (!isTerminal(job.state)) {
      log(`resuming job ${job.id} (${JobState[job.state]})`);
      startJob(job, true);
    }
  }
  // Reconcile the StatefulSet from the start: with nothing to resume it goes back to its minimum.
  kube?.jobsRunning(runners.size);

  let pruneJobs: { close(): Promise<void> } | undefined;
  let metricsServer: MetricsServer | undefined;
  if (opts.metricsPort !== undefined) metricsServer = await startMetricsServer(metrics.registry, () => true, opts.metricsPort, opts.host ?? "127.0.0.1");

  const handle: CoordinatorHandle = {
    address,
    metricsPort: metricsServer?.port,
    pool,
    async close() {
      health.setServing(false);
      await pruneJobs?.close();
      for (const r of runners.values()) r.detach();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      server.forceShutdown();
      await kube?.close();
      pool.close();
      await metricsServer?.close();
      await events.close();
      await store.close();
      await nc.close();
    },
  };
  if (opts.pruneJobs) {
    // After the resume above, so a PruneJob's job found in the store is already running again.
    try {
      pruneJobs = await (await import("./k8s/pruneJobs.js")).startPruneJobs(opts.pruneJobs, jobDeps, log);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }
  health.setServing(true);
  return handle;
}
