/**
 * Finds the worker pods the way client-go's informers do: LIST them by label selector, then
 * WATCH from the list's resourceVersion. A watch that ends or drops resumes from the last
 * resourceVersion seen (BOOKMARKs advance it too); a 410 Gone, as an HTTP status or an ERROR
 * event, means that version was compacted away, so the pods are LISTed again and the set is
 * rebuilt from that list (pods deleted meanwhile disappear even though no DELETED was seen).
 * The pods are the observed state; each change hands the full sorted list of ready addresses
 * to a callback, which reconciles the worker pool against it.
 */
import { CoreV1Api, type KubeConfig, type V1Pod } from "@kubernetes/client-node";
import { KubeApiError, KubeGoneError, toKubeApiError } from "./errors.js";
import { grpcPort, isReadyPod, podAddress } from "./podAddress.js";
import { untilWatchEnds, watchStream } from "./watchStream.js";

export interface PodDiscoveryOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  labelSelector: string;
  /** the workers' gRPC port; absent: each pod's container port named "grpc" */
  port?: number;
  /** every change: the full sorted list of ready addresses, and those that just left it */
  onChange: (addresses: string[], removed: string[]) => void;
  log?: (message: string) => void;
  /** the wait before retrying a failed list or watch doubles from initialMs up to maxMs */
  backoff?: { initialMs: number; maxMs: number };
  /** the API server ends each watch after this long, and it is resumed (client-go: 5-10 min) */
  watchTimeoutSeconds?: number;
  /** a LIST that has not answered by then is given up and retried */
  listTimeoutMs?: number;
}

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 };
const DEFAULT_WATCH_TIMEOUT_S = 300;
const DEFAULT_LIST_TIMEOUT_MS = 60_000;
// A watch whose connection died without a FIN never ends by itself: past its server-side
// timeout plus this grace it is presumed dead and reopened.
const WATCH_GRACE_MS = 30_000;
// A watch that ends this soon without one event counts as a failure, so a server that closes
// at once is retried with backoff instead of in a tight loop.
const SHORT_WATCH_MS = 1000;

export class PodDiscovery {
  /** the observed pods, by name */
  private readonly pods = new Map<string, V1Pod>();
  private published: string[] = [];
  private resourceVersion: string | undefined;
  private mustList = true;
  private closed = false;
  private loop: Promise<void> | undefined;
  private stopWatch: (() => void) | undefined;
  private wake: (() => void) | undefined;
  private readonly warnedNoPort = new Set<string>();
  private readonly api: CoreV1Api;
  private readonly subject: string;

  constructor(private readonly opts: PodDiscoveryOptions) {
    this.api = opts.kubeConfig.makeApiClient(CoreV1Api);
    this.subject = `namespace ${opts.namespace} pods (${opts.labelSelector})`;
  }

  /**
   * Lists the pods once, then watches in the background. A first LIST that fails throws (a
   * KubeError naming the namespace and selector): wrong RBAC or config should stop the start.
   */
  async start(): Promise<string[]> {
    await this.list();
    this.loop = this.run();
    return this.addresses();
  }

  addresses(): string[] {
    return [...this.published];
  }

  /** The resourceVersion the next watch resumes from. */
  get lastResourceVersion(): string | undefined {
    return this.resourceVersion;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stopWatch?.();
    this.wake?.();
    // A LIST in flight cannot be aborted; it is not waited for longer than this.
    await Promise.race([this.loop, delay(2000)]);
  }

  private log(message: string): void {
    (this.opts.log ?? ((m: string) => process.stderr.write(`coordinator: ${m}\n`)))(message);
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      let wait = 0;
      try {
        if (this.mustList) await this.list();
        const { events, ms } = await this.watchOnce();
        if (events === 0 && ms < SHORT_WATCH_MS) wait = this.backoff(++failures);
        else failures = 0;
      } catch (err) {
        if (this.closed) break;
        const e = toKubeApiError(err, this.subject, "watch");
        failures++;
        if (e instanceof KubeGoneError) {
          this.mustList = true;
          // The first relist is at once; a server that keeps answering 410 gets backoff.
          wait = failures > 1 ? this.backoff(failures - 1) : 0;
          this.log(`${e.message}; listing the pods again`);
        } else {
          wait = this.backoff(failures);
          this.log(`${e.message}; retrying in ${wait} ms${this.mustList ? "" : ` from resourceVersion ${this.resourceVersion}`}`);
        }
      }
      if (wait > 0 && !this.closed) await this.sleep(wait);
    }
  }

  private backoff(failures: number): number {
    const { initialMs, maxMs } = this.opts.backoff ?? DEFAULT_BACKOFF;
    return Math.min(maxMs, initialMs * 2 ** Math.min(failures - 1, 30));
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  /** LIST: replaces the observed pods wholesale (this is the reconcile after a 410). */
  private async list(): Promise<void> {
    let list;
    try {
      list = await withTimeout(
        this.api.listNamespacedPod({ namespace: this.opts.namespace, labelSelector: this.opts.labelSelector }),
        this.opts.listTimeoutMs ?? DEFAULT_LIST_TIMEOUT_MS, "no answer");
    } catch (err) {
      throw toKubeApiError(err, this.subject, "list");
    }
    this.pods.clear();
    for (const pod of list.items) {
      const name = pod.metadata?.name;
      if (name) this.pods.set(name, pod);
    }
    this.resourceVersion = list.metadata?.resourceVersion;
    this.mustList = false;
    this.publish();
  }

  /** One WATCH from the current resourceVersion; resolves when it ends, rejects when it fails. */
  private async watchOnce(): Promise<{ events: number; ms: number }> {
    const started = Date.now();
    const timeoutS = this.opts.watchTimeoutSeconds ?? DEFAULT_WATCH_TIMEOUT_S;
    let events = 0;
    const path = `/api/v1/namespaces/${encodeURIComponent(this.opts.namespace)}/pods`;
    const query = { labelSelector: this.opts.labelSelector, resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds: timeoutS };
    const watch = watchStream(this.opts.kubeConfig, path, query, (type, object) => {
      this.apply(type, object);
      events++;
    }, { ms: timeoutS * 1000 + WATCH_GRACE_MS, subject: this.subject, message: `watch still open ${WATCH_GRACE_MS / 1000} s past its ${timeoutS} s timeout; presumed dead` });
    await untilWatchEnds(watch, (stop) => (this.stopWatch = stop), () => this.closed);
    return { events, ms: Date.now() - started };
  }

  private apply(type: string, object: unknown): void {
    if (type === "ERROR") {
      const status = (object ?? {}) as { code?: number; reason?: string; message?: string };
      if (status.code === 410) throw new KubeGoneError(this.subject, `watch: ERROR event ${status.reason ?? "Gone"} (code 410): ${status.message ?? "resourceVersion too old"}`);
      throw new KubeApiError(this.subject, `watch: ERROR event ${status.reason ?? ""} (code ${status.code ?? "?"}): ${status.message ?? JSON.stringify(object)}`, { status: status.code });
    }
    const pod = object as V1Pod | undefined;
    const name = pod?.metadata?.name;
    if (type === "ADDED" || type === "MODIFIED") {
      if (name) this.pods.set(name, pod!);
    } else if (type === "DELETED") {
      if (name) this.pods.delete(name);
    } else if (type !== "BOOKMARK") {
      return; // an event type this client does not know: nothing to apply, no version to trust
    }
    const rv = pod?.metadata?.resourceVersion;
    if (rv) this.resourceVersion = rv;
    if (type !== "BOOKMARK") this.publish();
  }

  /** Tells the callback when the set of ready addresses changed. */
  private publish(): void {
    const next = new Set<string>();
    for (const [name, pod] of this.pods) {
      const address = podAddress(pod, this.opts.port);
      if (address) next.add(address);
      else if (isReadyPod(pod) && grpcPort(pod, this.opts.port) === undefined && !this.warnedNoPort.has(name)) {
        this.warnedNoPort.add(name);
        this.log(`warning: pod ${this.opts.namespace}/${name} is ready but has no container port named "grpc"; name the port or pass --k8s-worker-port`);
      }
    }
    const sorted = [...next].sort();
    if (sorted.length === this.published.length && sorted.every((a, i) => a === this.published[i])) return;
    const removed = this.published.filter((a) => !next.has(a));
    this.published = sorted;
    try {
      this.opts.onChange([...sorted], removed);
    } catch (err) {
      this.log(`worker list update failed: ${(err as Error).message}`);
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${message} after ${ms} ms`)), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
