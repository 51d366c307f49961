// A stand-in for the Kubernetes API server, as much as the coordinator's Kubernetes mode uses:
// pods (LIST and WATCH by label selector, resourceVersions, bookmarks, compaction and 410 Gone,
// as an HTTP status or as an ERROR event) and StatefulSets (GET and JSON merge PATCH, validated
// with kubernetes-models as the API server's validation would), and PruneJob custom resources
// (LIST, WATCH, GET, JSON merge PATCH of the object and of its status subresource, DELETE with
// finalizers and deletionTimestamp, uid and generation). It records every request, so
// tests assert the exact calls, and it is driven by the test: each mutation is one event.
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { writeFileSync } from "node:fs";
import { Pod } from "kubernetes-models/v1/Pod";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  headers: IncomingHttpHeaders;
  body: string;
  /** the HTTP status answered (a watch's is known once its head is sent) */
  status?: number;
}

/** The JSON of a pod as the API server sends it. */
export type PodObject = {
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; resourceVersion?: string; deletionTimestamp?: string };
  spec: { containers: Array<{ name: string; image: string; ports?: Array<{ name?: string; containerPort: number }> }> };
  status?: { phase?: string; podIP?: string; conditions?: Array<{ type: string; status: string }> };
};

/** A PruneJob (atvprune.dev/v1alpha1) as stored. */
export type CustomObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; generation?: number; creationTimestamp?: string; deletionTimestamp?: string; finalizers?: string[]; [k: string]: unknown };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown>;
};

const CR_PATH = /^\/apis\/atvprune\.dev\/v1alpha1\/namespaces\/([^/]+)\/prunejobs(?:\/([^/]+))?(\/status)?$/;

interface Watcher {
  res: ServerResponse;
  namespace: string;
  selector: Record<string, string>;
  bookmarks: boolean;
}

const TOKEN = "fake-kube-token";

export class FakeKubeApi {
  readonly requests: RecordedRequest[] = [];
  /** StatefulSets by namespace/name, as stored (after patches) */
  readonly statefulSets = new Map<string, Record<string, unknown>>();
  /** how a watch from a compacted resourceVersion is refused */
  goneAs: "http" | "event" = "http";
  /** answer LISTs with 403 (RBAC missing) */
  forbidList = false;
  /** called after a PATCH changed a StatefulSet's spec.replicas (tests add or remove pods here) */
  onScale: ((name: string, replicas: number) => void) | undefined;

  private rv = 1000;
  /** watches from a resourceVersion below this get 410 Gone (etcd compacted the history) */
  private floor = 0;
  private readonly pods = new Map<string, PodObject>();
  private readonly history: Array<{ rv: number; type: string; pod: PodObject }> = [];
  private readonly watchers = new Set<Watcher>();
  private readonly sockets = new Set<Socket>();
  private readonly customObjects = new Map<string, CustomObject>();
  private readonly crHistory: Array<{ rv: number; type: string; obj: CustomObject }> = [];
  private readonly crWatchers = new Set<ServerResponse>();
  private uids = 0;

  private constructor(private readonly server: Server, readonly url: string, readonly namespace: string) {}

  static async start(namespace = "atvp"): Promise<FakeKubeApi> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const api = new FakeKubeApi(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`, namespace);
    server.on("connection", (s) => { api.sockets.add(s); s.once("close", () => api.sockets.delete(s)); });
    server.on("request", (req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => api.handle(req.method ?? "GET", req.url ?? "/", req.headers, Buffer.concat(chunks).toString(), res));
    });
    return api;
  }

  /** Writes a kubeconfig for this server (plain http needs insecure-skip-tls-verify, as in client-node). */
  writeKubeconfig(path: string): void {
    writeFileSync(path, JSON.stringify({
      apiVersion: "v1", kind: "Config", "current-context": "fake",
      clusters: [{ name: "fake", cluster: { server: this.url, "insecure-skip-tls-verify": true } }],
      users: [{ name: "tester", user: { token: TOKEN } }],
      contexts: [{ name: "fake", context: { cluster: "fake", user: "tester", namespace: this.namespace } }],
    }));
  }

  get token(): string {
    return TOKEN;
  }

  /** The current resourceVersion (what a LIST now would return). */
  get resourceVersion(): string {
    return String(this.rv);
  }

  // ---- what the test does to the cluster -------------------------------------------------

  /** ADDED (or MODIFIED when the name exists). Returns the event's resourceVersion. */
  putPod(pod: PodObject): string {
    new Pod(pod as never).validate();
    const type = this.pods.has(pod.metadata.name) ? "MODIFIED" : "ADDED";
    return this.record(type, { ...pod, metadata: { ...pod.metadata, namespace: this.namespace } });
  }

  deletePod(name: string): string {
    const pod = this.pods.get(name);
    if (!pod) throw new Error(`fake API: no pod ${name}`);
    return this.record("DELETED", pod);
  }

  /** A BOOKMARK to every watch that asked for them: the version moved on (other objects changed). */
  bookmark(): string {
    this.rv++;
    for (const w of this.watchers) {
      if (w.bookmarks) send(w.res, "BOOKMARK", { kind: "Pod", apiVersion: "v1", metadata: { resourceVersion: String(this.rv) } });
    }
    return String(this.rv);
  }

  /** Forgets the history up to now: a watch from an older version gets 410 Gone. */
  compact(): void {
    this.floor = this.rv;
    this.history.length = 0;
    this.crHistory.length = 0;
  }

  // ---- PruneJobs ---------------------------------------------------------------------------

  /** Creates a PruneJob as `kubectl apply` would (uid, generation 1, creationTimestamp); ADDED. */
  createPruneJob(obj: { metadata: { name: string; [k: string]: unknown }; spec?: Record<string, unknown> }): CustomObject {
    if (this.customObjects.has(obj.metadata.name)) throw new Error(`fake API: prunejob ${obj.metadata.name} exists`);
    const created: CustomObject = {
      apiVersion: "atvprune.dev/v1alpha1", kind: "PruneJob", ...obj,
      metadata: { ...obj.metadata, namespace: this.namespace, uid: `uid-${++this.uids}-${obj.metadata.name}`, generation: 1, creationTimestamp: new Date().toISOString() },
    };
    return this.recordCr("ADDED", created);
  }

  /** DELETE as kubectl delete: with finalizers the object stays, marked with a deletionTimestamp. */
  deletePruneJob(name: string): CustomObject | undefined {
    const obj = this.customObjects.get(name);
    if (!obj) throw new Error(`fake API: no prunejob ${name}`);
    if ((obj.metadata.finalizers ?? []).length === 0) {
      this.recordCr("DELETED", obj);
      return undefined;
    }
    if (obj.metadata.deletionTimestamp) return obj;
    return this.recordCr("MODIFIED", { ...obj, metadata: { ...obj.metadata, deletionTimestamp: new Date().toISOString() } });
  }

  pruneJob(name: string): CustomObject | undefined {
    return this.customObjects.get(name);
  }

  /** Waits (bounded) until the PruneJob satisfies `check` (undefined: it is gone). */
  async waitForPruneJob(name: string, check: (o: CustomObject | undefined) => boolean, timeoutMs = 60_000): Promise<CustomObject | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const o = this.customObjects.get(name);
      if (check(o)) return o;
      if (Date.now() > deadline) throw new Error(`fake API: prunejob ${name} did not reach the expected state in ${timeoutMs} ms: ${JSON.stringify(o)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private recordCr(type: string, obj: CustomObject): CustomObject {
    this.rv++;
    const stamped = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(this.rv) } };
    if (type === "DELETED") this.customObjects.delete(obj.metadata.name);
    else this.customObjects.set(obj.metadata.name, stamped);
    this.crHistory.push({ rv: this.rv, type, obj: stamped });
    for (const w of this.crWatchers) send(w, type, stamped);
    return stamped;
  }

  private handleCustomObject(method: string, m: RegExpExecArray, params: URLSearchParams, headers: IncomingHttpHeaders, body: string, rec: RecordedRequest, res: ServerResponse,
    reply: (status: number, obj: unknown) => void): void {
    const [, ns, name, sub] = m;
    if (decodeURIComponent(ns!) !== this.namespace) return reply(403, failure(403, "Forbidden", `prunejobs.atvprune.dev is forbidden in namespace ${ns}`));
    if (!name) {
      if (method !== "GET") return reply(405, failure(405, "MethodNotAllowed", `${method} on the collection`));
      if (params.get("watch") === "true") return this.watchCr(rec, params, res);
      return reply(200, { apiVersion: "atvprune.dev/v1alpha1", kind: "PruneJobList", metadata: { resourceVersion: String(this.rv) }, items: [...this.customObjects.values()] });
    }
    const current = this.customObjects.get(decodeURIComponent(name));
    if (!current) return reply(404, failure(404, "NotFound", `prunejobs.atvprune.dev "${name}" not found`));
    if (method === "GET") return reply(200, current);
    if (method === "DELETE") return reply(200, this.deletePruneJob(current.metadata.name) ?? current);
    if (method !== "PATCH") return reply(405, failure(405, "MethodNotAllowed", method));
    if (headers["content-type"] !== "application/merge-patch+json") return reply(415, failure(415, "UnsupportedMediaType", `unsupported patch type ${headers["content-type"]}`));
    const patch = JSON.parse(body) as { metadata?: Record<string, unknown>; spec?: unknown; status?: unknown };
    const wantRv = patch.metadata?.["resourceVersion"];
    if (wantRv !== undefined && wantRv !== current.metadata.resourceVersion) {
      return reply(409, failure(409, "Conflict", `Operation cannot be fulfilled on prunejobs.atvprune.dev "${name}": the object has been modified; please apply your changes to the latest version and try again`));
    }
    let next: CustomObject;
    if (sub) {
      // The status subresource changes status only.
      next = { ...current, status: mergePatch(current.status ?? {}, patch.status ?? {}) as Record<string, unknown> };
    } else {
      // The main resource ignores status; a spec change bumps the generation.
      const { status: _ignored, ...rest } = patch;
      const { resourceVersion: _rv, ...metaPatch } = rest.metadata ?? {};
      next = mergePatch(current, { ...rest, metadata: metaPatch }) as CustomObject;
      next.status = current.status;
      if (rest.spec !== undefined && JSON.stringify(next.spec) !== JSON.stringify(current.spec)) next.metadata.generation = (current.metadata.generation ?? 1) + 1;
    }
    if (next.metadata.deletionTimestamp && (next.metadata.finalizers ?? []).length === 0) {
      this.recordCr("DELETED", next);
      return reply(200, next);
    }
    reply(200, this.recordCr("MODIFIED", next));
  }

  private watchCr(rec: RecordedRequest, params: URLSearchParams, res: ServerResponse): void {
    const from = params.get("resourceVersion");
    rec.status = from && Number(from) < this.floor ? 410 : 200;
    if (rec.status === 410) {
      res.writeHead(410, { "content-type": "application/json" });
      res.end(JSON.stringify(goneStatus()));
      return;
    }
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    if (from) for (const e of this.crHistory) { if (e.rv > Number(from)) send(res, e.type, e.obj); }
    else for (const o of this.customObjects.values()) send(res, "ADDED", o);
    this.crWatchers.add(res);
    const timeout = Number(params.get("timeoutSeconds") ?? 0);
    const timer = timeout > 0 ? setTimeout(() => { this.crWatchers.delete(res); res.end(); }, timeout * 1000).unref() : undefined;
    res.once("close", () => { clearTimeout(timer); this.crWatchers.delete(res); });
  }

  /** The connections of the open watches break (no clean end). */
  dropWatches(): void {
    for (const w of this.watchers) w.res.socket?.destroy();
    this.watchers.clear();
    for (const w of this.crWatchers) w.socket?.destroy();
    this.crWatchers.clear();
  }

  /** An ERROR event with code 410 on every open watch, which then ends (the watch cache fell behind). */
  expireWatches(): void {
    for (const w of this.watchers) {
      send(w.res, "ERROR", goneStatus());
      w.res.end();
    }
    this.watchers.clear();
  }

  openWatches(): number {
    return this.watchers.size + this.crWatchers.size;
  }

  watches(): RecordedRequest[] {
    return this.requests.filter((r) => r.query["watch"] === "true");
  }

  lists(): RecordedRequest[] {
    return this.requests.filter((r) => r.method === "GET" && r.path.endsWith("/pods") && r.query["watch"] !== "true");
  }

  /** Waits (bounded) until `count` requests match. */
  async waitForRequests(match: (r: RecordedRequest) => boolean, count = 1, timeoutMs = 10_000): Promise<RecordedRequest[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.requests.filter(match);
      if (found.length >= count) return found;
      if (Date.now() > deadline) {
        throw new Error(`fake API: ${found.length} of ${count} expected requests after ${timeoutMs} ms; seen:\n${this.requests.map(describe).join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async close(): Promise<void> {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
    for (const w of this.crWatchers) w.end();
    this.crWatchers.clear();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ---- the API ---------------------------------------------------------------------------

  private record(type: string, pod: PodObject): string {
    this.rv++;
    const stamped = { ...pod, metadata: { ...pod.metadata, resourceVersion: String(this.rv) } };
    if (type === "DELETED") this.pods.delete(pod.metadata.name);
    else this.pods.set(pod.metadata.name, stamped);
    this.history.push({ rv: this.rv, type, pod: stamped });
    for (const w of this.watchers) if (matches(stamped, w.namespace, w.selector)) send(w.res, type, stamped);
    return String(this.rv);
  }

  private handle(method: string, rawUrl: string, headers: IncomingHttpHeaders, body: string, res: ServerResponse): void {
    const url = new URL(rawUrl, this.url);
    const rec: RecordedRequest = { method, path: url.pathname, query: Object.fromEntries(url.searchParams), headers, body };
    this.requests.push(rec);
    const reply = (status: number, obj: unknown) => {
      rec.status = status;
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(obj));
    };
    if (headers.authorization !== `Bearer ${TOKEN}`) return reply(401, failure(401, "Unauthorized", "Unauthorized"));

    const pods = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname);
    if (pods && method === "GET") {
      const namespace = decodeURIComponent(pods[1]!);
      const selector = parseSelector(url.searchParams.get("labelSelector") ?? "");
      if (rec.query["watch"] === "true") return this.watch(rec, namespace, selector, url.searchParams, res);
      if (this.forbidList) return reply(403, failure(403, "Forbidden", `pods is forbidden: User "system:serviceaccount:${namespace}:atvp" cannot list resource "pods" in API group "" in the namespace "${namespace}"`));
      const items = [...this.pods.values()].filter((p) => matches(p, namespace, selector));
      return reply(200, { kind: "PodList", apiVersion: "v1", metadata: { resourceVersion: String(this.rv) }, items });
    }

    const cr = CR_PATH.exec(url.pathname);
    if (cr) return this.handleCustomObject(method, cr, url.searchParams, headers, body, rec, res, reply);

    const sts = /^\/apis\/apps\/v1\/namespaces\/([^/]+)\/statefulsets\/([^/]+)$/.exec(url.pathname);
    if (sts) {
      const key = `${decodeURIComponent(sts[1]!)}/${decodeURIComponent(sts[2]!)}`;
      const current = this.statefulSets.get(key);
      if (!current) return reply(404, failure(404, "NotFound", `statefulsets.apps "${sts[2]}" not found`));
      if (method === "GET") return reply(200, current);
      if (method === "PATCH") {
        if (headers["content-type"] !== "application/merge-patch+json") return reply(415, failure(415, "UnsupportedMediaType", `unsupported patch type ${headers["content-type"]}`));
        const merged = mergePatch(current, JSON.parse(body)) as Record<string, unknown>;
        try {
          new StatefulSet(merged as never).validate();
        } catch (err) {
          return reply(422, failure(422, "Invalid", `StatefulSet.apps "${sts[2]}" is invalid: ${(err as Error).message}`));
        }
        this.rv++;
        const meta = merged["metadata"] as Record<string, unknown>;
        merged["metadata"] = { ...meta, resourceVersion: String(this.rv), generation: Number(meta["generation"] ?? 1) + 1 };
        this.statefulSets.set(key, merged);
        reply(200, merged);
        const before = (current["spec"] as { replicas?: number }).replicas;
        const after = (merged["spec"] as { replicas?: number }).replicas;
        if (after !== undefined && after !== before) this.onScale?.(decodeURIComponent(sts[2]!), after);
        return;
      }
    }
    reply(404, failure(404, "NotFound", `the fake API does not serve ${method} ${url.pathname}`));
  }

  private watch(rec: RecordedRequest, namespace: string, selector: Record<string, string>, params: URLSearchParams, res: ServerResponse): void {
    const from = params.get("resourceVersion");
    if (from && Number(from) < this.floor) {
      if (this.goneAs === "http") {
        rec.status = 410;
        res.writeHead(410, { "content-type": "application/json" });
        res.end(JSON.stringify(goneStatus()));
        return;
      }
      rec.status = 200;
      res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
      send(res, "ERROR", goneStatus());
      res.end();
      return;
    }
    rec.status = 200;
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    if (from) {
      for (const e of this.history) if (e.rv > Number(from) && matches(e.pod, namespace, selector)) send(res, e.type, e.pod);
    } else {
      for (const p of this.pods.values()) if (matches(p, namespace, selector)) send(res, "ADDED", p);
    }
    const w: Watcher = { res, namespace, selector, bookmarks: params.get("allowWatchBookmarks") === "true" };
    this.watchers.add(w);
    const timeout = Number(params.get("timeoutSeconds") ?? 0);
    const timer = timeout > 0 ? setTimeout(() => { this.watchers.delete(w); res.end(); }, timeout * 1000).unref() : undefined;
    res.once("close", () => { clearTimeout(timer); this.watchers.delete(w); });
  }
}

function send(res: ServerResponse, type: string, object: unknown): void {
  if (!res.writableEnded && !res.destroyed) res.write(JSON.stringify({ type, object }) + "\n");
}

function failure(code: number, reason: string, message: string) {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code };
}

function goneStatus() {
  return failure(410, "Expired", "too old resource version");
}

function parseSelector(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const term of s.split(",").filter(Boolean)) {
    const [k, v] = term.split("=");
    out[k!.trim()] = (v ?? "").trim();
  }
  return out;
}

function matches(pod: PodObject, namespace: string, selector: Record<string, string>): boolean {
  if ((pod.metadata.namespace ?? namespace) !== namespace) return false;
  return Object.entries(selector).every(([k, v]) => pod.metadata.labels?.[k] === v);
}

/** RFC 7386 JSON merge patch. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = target !== null && typeof target === "object" && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function describe(r: RecordedRequest): string {
  return `${r.method} ${r.path}?${new URLSearchParams(r.query).toString()} -> ${r.status ?? "open"}${r.body ? ` ${r.body}` : ""}`;
}
