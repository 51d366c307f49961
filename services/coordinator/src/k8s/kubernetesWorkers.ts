/**
 * The coordinator's Kubernetes mode put together: pod discovery reconciles the worker pool
 * (the pool's addresses are the ready pods', plus any static ones; an address that leaves is
 * marked dead, so a shard running there is rerun elsewhere at once), and, when a StatefulSet is
 * named, the set is scaled up for a job that asks for more workers than are ready and back
 * down once no job runs. Scaling problems are logged, never fatal: a job then runs on the
 * workers that are there.
 */
import type { WorkerPool } from "../workerPool.js";
import { KubeConfigError } from "./errors.js";
import { loadKubeAccess } from "./kubeConfig.js";
import { PodDiscovery } from "./podDiscovery.js";
import { StatefulSetScaler } from "./statefulSetScaler.js";

export interface KubernetesOptions {
  /** default: the pod's own namespace in a cluster, else the kubeconfig context's */
  namespace?: string;
  labelSelector: string;
  /** the workers' gRPC port; absent: the container port named "grpc" */
  port?: number;
  /** the worker StatefulSet to scale; absent: no scaling */
  statefulSet?: string;
  /** replicas when no job runs (default 1) */
  minReplicas?: number;
  /** the most replicas a job may scale the set to; required with statefulSet (GPUs cost) */
  maxReplicas?: number;
  /** a kubeconfig file; absent: the in-cluster service account */
  kubeconfig?: string;
  /** how long an idle coordinator waits before scaling down (default 60 s; back-to-back jobs keep their pods) */
  scaleDownDelayMs?: number;
  /** how long a job waits for the pods a scale-up asked for before it is planned over fewer (default 180 s) */
  scaleUpWaitMs?: number;
  /** discovery tuning (tests shorten them) */
  backoff?: { initialMs: number; maxMs: number };
  watchTimeoutSeconds?: number;
}

export interface KubernetesWorkers {
  namespace: string;
  discovery: PodDiscovery;
  scaler: StatefulSetScaler | undefined;
  /** Before a job is planned: scale up for `requested` workers (0: one) and wait, bounded, for them. */
  acquireWorkers(requested: number, signal: AbortSignal): Promise<void>;
  /** The coordinator's count of running jobs changed; at 0 the scale-down is scheduled. */
  jobsRunning(count: number): void;
  close(): Promise<void>;
}

export async function startKubernetesWorkers(
  opts: KubernetesOptions, pool: WorkerPool, staticWorkers: readonly string[], log: (message: string) => void,
): Promise<KubernetesWorkers> {
  const access = loadKubeAccess({ kubeconfig: opts.kubeconfig, namespace: opts.namespace });
  const { namespace } = access;
  const discovery = new PodDiscovery({
    kubeConfig: access.config, namespace, labelSelector: opts.labelSelector, port: opts.port, log,
    backoff: opts.backoff, watchTimeoutSeconds: opts.watchTimeoutSeconds,
    onChange: (addresses, removed) => {
      pool.setAddresses([...staticWorkers, ...addresses]);
      // The pool forgets a removed address already; marking it dead as well keeps the rule in
      // one place should a static worker share that address.
      for (const a of removed) pool.markDead(a);
      log(`workers in ${namespace}: ${addresses.join(", ") || "none"}${removed.length > 0 ? ` (gone: ${removed.join(", ")})` : ""}`);
    },
  });
  if (opts.statefulSet !== undefined && opts.maxReplicas === undefined) {
    throw new KubeConfigError(`statefulset ${namespace}/${opts.statefulSet}`, "scaling needs a ceiling: set maxReplicas (--k8s-max-replicas)");
  }
  const scaler = opts.statefulSet === undefined ? undefined : new StatefulSetScaler({
    kubeConfig: access.config, namespace, name: opts.statefulSet, minReplicas: opts.minReplicas ?? 1, maxReplicas: opts.maxReplicas!,
  });
  const found = await discovery.start();
  log(`Kubernetes mode: ${access.server}, ${found.length} ready worker pod(s) matching ${opts.labelSelector} in ${namespace}${scaler ? `, scaling ${scaler.subject}` : ""}`);

  let closed = false;
  let running = 0;
  let scaleDownTimer: NodeJS.Timeout | undefined;
  // Scale-ups and scale-downs run one at a time, in the order asked, so a late scale-down
  // cannot undo the scale-up of a job that started after it.
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(f: () => Promise<T>): Promise<T> => {
    const p = queue.then(f);
    queue = p.catch(() => {});
    return p;
  };

  return {
    namespace, discovery, scaler,

    async acquireWorkers(requested, signal) {
      if (!scaler || closed) return;
      const want = Math.max(1, requested);
      if (pool.ready().length >= want) return;
      try {
        const replicas = await serial(() => scaler.scaleUp(want));
        const expect = Math.min(want, replicas);
        const ready = await pool.waitForReady(expect, opts.scaleUpWaitMs ?? 180_000, signal);
        if (ready.length < expect && !signal.aborted) log(`${scaler.subject}: ${ready.length} of ${expect} workers ready in time; planning over those`);
      } catch (err) {
        log(`warning: could not scale ${scaler.subject} for ${want} workers: ${(err as Error).message}; planning over the ready workers`);
      }
    },

    jobsRunning(count) {
      running = count;
      if (!scaler || closed) return;
      if (count > 0) {
        clearTimeout(scaleDownTimer);
        scaleDownTimer = undefined;
        return;
      }
      if (scaleDownTimer !== undefined) return;
      scaleDownTimer = setTimeout(() => {
        scaleDownTimer = undefined;
        if (running > 0 || closed) return;
        serial(() => (running > 0 || closed ? Promise.resolve(undefined) : scaler.scaleDown())).then(
          (n) => { if (n !== undefined) log(`${scaler.subject}: idle, ${n} replica(s)`); },
          (err: unknown) => log(`warning: could not scale ${scaler.subject} down: ${(err as Error).message}`),
        );
      }, opts.scaleDownDelayMs ?? 60_000);
    },

    async close() {
      closed = true;
      clearTimeout(scaleDownTimer);
      await discovery.close();
    },
  };
}
