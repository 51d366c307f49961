// The coordinator's Kubernetes mode against a fake API server on 127.0.0.1 that speaks the
// list/watch JSON: the exact requests (paths, labelSelector, watch=true, the resourceVersion each
// watch starts from), the ready set through ADDED/MODIFIED/DELETED/BOOKMARK, dropped watches,
// 410 Gone both ways, StatefulSet scaling, and real jobs on real workers whose pods come and go.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { totalmem } from "node:os";
import { join } from "node:path";
import type { V1Pod } from "@kubernetes/client-node";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator } from "../../services/coordinator/src/coordinator.js";
import { KubeApiError, KubeConfigError } from "../../services/coordinator/src/k8s/errors.js";
import { loadKubeAccess, SERVICE_ACCOUNT_DIR } from "../../services/coordinator/src/k8s/kubeConfig.js";
import type { KubernetesOptions } from "../../services/coordinator/src/k8s/kubernetesWorkers.js";
import { DEFAULT_WORKER_SELECTOR, podAddress } from "../../services/coordinator/src/k8s/podAddress.js";
import { PodDiscovery, type PodDiscoveryOptions } from "../../services/coordinator/src/k8s/podDiscovery.js";
import { FIELD_MANAGER, StatefulSetScaler } from "../../services/coordinator/src/k8s/statefulSetScaler.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { deviceMemoryBytes, gpuMemoryBytes } from "../../services/worker/src/gpuMemory.js";
import { FakeKubeApi, type PodObject, type RecordedRequest } from "../support/fakeKubeApi.js";
import { tempDir } from "../support/fixtures.js";
import { jobClient, startChild, waitForJob } from "../support/cluster.js";

const SEL = DEFAULT_WORKER_SELECTOR;
const LABELS = { "app.kubernetes.io/name": "atv-prune", "app.kubernetes.io/component": "worker" };
const PODS_PATH = "/api/v1/namespaces/atvp/pods";
const STS_PATH = "/apis/apps/v1/namespaces/atvp/statefulsets/atvp-worker";
const FAST = { initialMs: 20, maxMs: 200 };

const tmp = tempDir("k8s");
let model: { model: string; calib: string };
let reference: Buffer;
const natsServers: NatsServerHandle[] = [];
let counter = 0;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 4, hidden: 64, samples: 12, seqLen: 48, imageTokens: 20, seed: 5 });
  model = { model: g.modelPath, calib: g.calibPath };
  const out = join(tmp.path, "ref");
  await pruneModel({ model: model.model, calib: model.calib, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential", out, threads: 1 });
  reference = readFileSync(join(out, "model.onnx.data"));
});
after(async () => {
  for (const n of natsServers) await n.stop();
  tmp.cleanup();
});

function workerPod(name: string, port: number, o: { ip?: string; ready?: boolean; phase?: string; deleting?: boolean; portName?: string } = {}): PodObject {
  const phase = o.phase ?? "Running";
  return {
    metadata: { name, labels: { ...LABELS }, ...(o.deleting ? { deletionTimestamp: "2026-01-01T00:00:00Z" } : {}) },
    spec: { containers: [{ name: "worker", image: "atvp-worker:test", ports: [{ name: "metrics", containerPort: 9100 }, { name: o.portName ?? "grpc", containerPort: port }] }] },
    status: {
      phase,
      ...(phase === "Pending" ? {} : { podIP: o.ip ?? "127.0.0.1" }),
      conditions: [{ type: "Ready", status: o.ready === false ? "False" : "True" }],
    },
  };
}

function statefulSet(replicas: number): Record<string, unknown> {
  return {
    apiVersion: "apps/v1", kind: "StatefulSet",
    metadata: { name: "atvp-worker", namespace: "atvp", resourceVersion: "1", generation: 1 },
    spec: {
      replicas, serviceName: "atvp-worker", selector: { matchLabels: LABELS },
      template: { metadata: { labels: LABELS }, spec: { containers: [{ name: "worker", image: "atvp-worker:test", ports: [{ name: "grpc", containerPort: 7070 }] }] } },
    },
  };
}

function kubeconfigFor(api: FakeKubeApi): string {
  const path = join(tmp.path, `kubeconfig-${++counter}.yaml`);
  api.writeKubeconfig(path);
  return path;
}

function discovery(api: FakeKubeApi, extra: Partial<PodDiscoveryOptions> = {}) {
  const access = loadKubeAccess({ kubeconfig: kubeconfigFor(api) });
  const changes: Array<{ addresses: string[]; removed: string[] }> = [];
  const logs: string[] = [];
  const d = new PodDiscovery({
    kubeConfig: access.config, namespace: access.namespace, labelSelector: SEL, backoff: FAST,
    onChange: (addresses, removed) => changes.push({ addresses, removed }), log: (m) => logs.push(m), ...extra,
  });
  return { d, changes, logs };
}

async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const isWatch = (r: RecordedRequest) => r.query["watch"] === "true";
const isList = (r: RecordedRequest) => r.method === "GET" && r.path === PODS_PATH && r.query["watch"] === undefined;
const watchQuery = (rv: string) => ({ watch: "true", labelSelector: SEL, resourceVersion: rv, allowWatchBookmarks: "true", timeoutSeconds: "300" });

test("a pod's address: ready, running, with an IP and not being deleted; port by number or by the name grpc", () => {
  const pod = (p: PodObject) => p as unknown as V1Pod;
  assert.equal(podAddress(pod(workerPod("a", 7001, { ip: "10.1.2.3" })), undefined), "10.1.2.3:7001");
  assert.equal(podAddress(pod(workerPod("a", 7001, { ip: "10.1.2.3" })), 9000), "10.1.2.3:9000");
  assert.equal(podAddress(pod(workerPod("a", 7001, { ip: "fd00::5" })), undefined), "[fd00::5]:7001");
  assert.equal(podAddress(pod(workerPod("a", 7001, { ready: false })), undefined), undefined);
  assert.equal(podAddress(pod(workerPod("a", 7001, { phase: "Pending" })), undefined), undefined);
  assert.equal(podAddress(pod(workerPod("a", 7001, { phase: "Succeeded" })), undefined), undefined);
  assert.equal(podAddress(pod(workerPod("a", 7001, { deleting: true })), undefined), undefined);
  assert.equal(podAddress(pod(workerPod("a", 7001, { portName: "rpc" })), undefined), undefined);
  assert.equal(podAddress(pod(workerPod("a", 7001, { portName: "rpc" })), 7070), "127.0.0.1:7070");
});

test("LIST by label selector, then WATCH from the list's resourceVersion: 2 ready pods of 3 give 2 addresses", async () => {
  const api = await FakeKubeApi.start();
  const { d, changes } = discovery(api);
  try {
    api.putPod(workerPod("atvp-worker-0", 7001, { ip: "10.0.0.2" }));
    api.putPod(workerPod("atvp-worker-1", 7002, { ip: "10.0.0.1" }));
    api.putPod(workerPod("atvp-worker-2", 7003, { ip: "10.0.0.3", ready: false }));
    api.putPod({ ...workerPod("someone-else", 7004), metadata: { name: "someone-else", labels: { app: "other" } } });
    const listRv = api.resourceVersion;
    assert.deepEqual(await d.start(), ["10.0.0.1:7002", "10.0.0.2:7001"]);
    assert.deepEqual(changes, [{ addresses: ["10.0.0.1:7002", "10.0.0.2:7001"], removed: [] }]);
    const [watch] = await api.waitForRequests(isWatch);
    const list = api.requests[0]!;
    assert.deepEqual({ method: list.method, path: list.path, query: list.query }, { method: "GET", path: PODS_PATH, query: { labelSelector: SEL } });
    assert.equal(list.headers.authorization, `Bearer ${api.token}`);
    assert.deepEqual({ method: watch!.method, path: watch!.path, query: watch!.query }, { method: "GET", path: PODS_PATH, query: watchQuery(listRv) });
    assert.equal(watch!.headers.authorization, `Bearer ${api.token}`);
    assert.equal(api.requests.length, 2);
  } finally {
    await d.close();
    await api.close();
  }
});

test("watch events: ADDED (not ready), MODIFIED (ready), MODIFIED (deleting) and DELETED update the set", async () => {
  const api = await FakeKubeApi.start();
  const { d, changes } = discovery(api);
  try {
    api.putPod(workerPod("atvp-worker-0", 7001));
    await d.start();
    await until(() => api.openWatches() === 1, "the watch");
    api.putPod(workerPod("atvp-worker-1", 7002, { ready: false }));
    api.putPod(workerPod("atvp-worker-1", 7002));
    await until(() => changes.length === 2, "the ready pod");
    api.putPod(workerPod("atvp-worker-0", 7001, { deleting: true }));
    await until(() => changes.length === 3, "the deleting pod");
    const last = api.deletePod("atvp-worker-1");
    await until(() => changes.length === 4, "the deleted pod");
    assert.deepEqual(changes, [
      { addresses: ["127.0.0.1:7001"], removed: [] },
      { addresses: ["127.0.0.1:7001", "127.0.0.1:7002"], removed: [] },
      { addresses: ["127.0.0.1:7002"], removed: ["127.0.0.1:7001"] },
      { addresses: [], removed: ["127.0.0.1:7002"] },
    ]);
    assert.equal(d.lastResourceVersion, last);
    assert.equal(api.lists().length, 1);
  } finally {
    await d.close();
    await api.close();
  }
});

test("a dropped watch is resumed from the last event's resourceVersion, without a new LIST", async () => {
  const api = await FakeKubeApi.start();
  const { d } = discovery(api);
  try {
    api.putPod(workerPod("atvp-worker-0", 7001));
    const listRv = api.resourceVersion;
    await d.start();
    await until(() => api.openWatches() === 1, "the watch");
    const rv = api.putPod(workerPod("atvp-worker-1", 7002));
    await until(() => d.lastResourceVersion === rv, "the event");
    api.dropWatches();
    const watches = await api.waitForRequests(isWatch, 2);
    assert.deepEqual(watches.map((w) => w.query), [watchQuery(listRv), watchQuery(rv)]);
    // The resumed watch delivers what happens next.
    await until(() => api.openWatches() === 1, "the resumed watch");
    api.deletePod("atvp-worker-0");
    await until(() => d.addresses().join() === "127.0.0.1:7002", "the deletion through the resumed watch");
    assert.equal(api.lists().length, 1);
  } finally {
    await d.close();
    await api.close();
  }
});

test("BOOKMARK events advance the resourceVersion a watch resumes from, and change nothing else", async () => {
  const api = await FakeKubeApi.start();
  const { d, changes } = discovery(api);
  try {
    api.putPod(workerPod("atvp-worker-0", 7001));
    await d.start();
    await until(() => api.openWatches() === 1, "the watch");
    const bookmark = api.bookmark();
    await until(() => d.lastResourceVersion === bookmark, "the bookmark");
    assert.equal(changes.length, 1);
    api.dropWatches();
    const watches = await api.waitForRequests(isWatch, 2);
    assert.deepEqual(watches[1]!.query, watchQuery(bookmark));
  } finally {
    await d.close();
    await api.close();
  }
});

for (const goneAs of ["http", "event"] as const) {
  test(`410 Gone (${goneAs === "http" ? "HTTP 410 on the watch" : "an ERROR event with code 410"}): LIST again and reconcile; a pod deleted meanwhile goes`, async () => {
    const api = await FakeKubeApi.start();
    api.goneAs = goneAs;
    const { d, changes } = discovery(api);
    try {
      api.putPod(workerPod("atvp-worker-0", 7001));
      api.putPod(workerPod("atvp-worker-1", 7002));
      const listRv = api.resourceVersion;
      await d.start();
      await until(() => api.openWatches() === 1, "the watch");
      // While the client is disconnected a pod goes and the history is compacted: the DELETED
      // is never delivered, only a fresh LIST can tell.
      api.dropWatches();
      api.deletePod("atvp-worker-1");
      api.compact();
      const relistRv = api.resourceVersion;
      await api.waitForRequests(isWatch, 3);
      assert.deepEqual(d.addresses(), ["127.0.0.1:7001"]);
      assert.deepEqual(changes.at(-1), { addresses: ["127.0.0.1:7001"], removed: ["127.0.0.1:7002"] });
      const seen = api.requests.map((r) => ({ list: isList(r), rv: r.query["resourceVersion"], status: r.status }));
      assert.deepEqual(seen, [
        { list: true, rv: undefined, status: 200 },
        { list: false, rv: listRv, status: 200 },
        { list: false, rv: listRv, status: goneAs === "http" ? 410 : 200 },
        { list: true, rv: undefined, status: 200 },
        { list: false, rv: relistRv, status: 200 },
      ]);
      assert.deepEqual(api.lists()[1]!.query, { labelSelector: SEL });
    } finally {
      await d.close();
      await api.close();
    }
  });
}

test("an ERROR 410 on an open watch (the watch cache fell behind): LIST again, watch from the new list", async () => {
  const api = await FakeKubeApi.start();
  const { d, logs } = discovery(api);
  try {
    api.putPod(workerPod("atvp-worker-0", 7001));
    await d.start();
    await until(() => api.openWatches() === 1, "the watch");
    const rv = api.putPod(workerPod("atvp-worker-1", 7002));
    await until(() => d.lastResourceVersion === rv, "the event");
    api.expireWatches();
    const watches = await api.waitForRequests(isWatch, 2);
    assert.equal(api.lists().length, 2);
    assert.deepEqual(watches[1]!.query, watchQuery(rv));
    assert.match(logs.join("\n"), /namespace atvp pods \(.*\): watch: ERROR event Expired \(code 410\).*listing the pods again/);
  } finally {
    await d.close();
    await api.close();
  }
});

test("a forbidden LIST fails the start with an error naming the namespace, the selector and RBAC", async () => {
  const api = await FakeKubeApi.start();
  api.forbidList = true;
  const { d } = discovery(api);
  try {
    await assert.rejects(d.start(), (err: unknown) => {
      assert.ok(err instanceof KubeApiError);
      assert.equal(err.status, 403);
      assert.match(err.message, new RegExp(`namespace atvp pods \\(${SEL.replace(/\./g, "\\.")}\\): list failed with HTTP 403: .*cannot list resource "pods".*RBAC`));
      return true;
    });
  } finally {
    await d.close();
    await api.close();
  }
});

test("StatefulSet scaling: GET, then a merge PATCH of spec.replicas within [min, max]; objects valid for kubernetes-models", async () => {
  const api = await FakeKubeApi.start();
  try {
    api.statefulSets.set("atvp/atvp-worker", statefulSet(1));
    const access = loadKubeAccess({ kubeconfig: kubeconfigFor(api) });
    const scaler = new StatefulSetScaler({ kubeConfig: access.config, namespace: "atvp", name: "atvp-worker", minReplicas: 1, maxReplicas: 4 });
    assert.equal(await scaler.scaleUp(3), 3);
    assert.equal(await scaler.scaleUp(10), 4);
    assert.equal(await scaler.scaleUp(2), 4);
    assert.equal(await scaler.scaleDown(), 1);
    assert.equal(await scaler.scaleDown(), 1);
    const calls = api.requests.map((r) => `${r.method} ${r.path}`);
    assert.deepEqual(calls, [
      `GET ${STS_PATH}`, `PATCH ${STS_PATH}`, `GET ${STS_PATH}`, `PATCH ${STS_PATH}`, `GET ${STS_PATH}`, `GET ${STS_PATH}`, `PATCH ${STS_PATH}`, `GET ${STS_PATH}`,
    ]);
    const patches = api.requests.filter((r) => r.method === "PATCH");
    assert.deepEqual(patches.map((p) => JSON.parse(p.body)), [{ spec: { replicas: 3 } }, { spec: { replicas: 4 } }, { spec: { replicas: 1 } }]);
    for (const p of patches) {
      assert.equal(p.headers["content-type"], "application/merge-patch+json");
      assert.deepEqual(p.query, { fieldManager: FIELD_MANAGER });
      assert.equal(p.status, 200);
      // The patched object is a valid StatefulSet (the fake API server validated it as well).
      const replicas = (JSON.parse(p.body) as { spec: { replicas: number } }).spec.replicas;
      const patched = statefulSet(1);
      patched["spec"] = { ...(patched["spec"] as object), replicas };
      assert.doesNotThrow(() => new StatefulSet(patched as never).validate());
    }
    const stored = api.statefulSets.get("atvp/atvp-worker")!;
    assert.doesNotThrow(() => new StatefulSet(stored as never).validate());
    assert.equal((stored["spec"] as { replicas: number }).replicas, 1);

    // What the API server rejects comes back as a typed error naming the object.
    const broken = statefulSet(1);
    delete (broken["spec"] as Record<string, unknown>)["selector"];
    api.statefulSets.set("atvp/broken", { ...broken, metadata: { name: "broken", namespace: "atvp" } });
    const bad = new StatefulSetScaler({ kubeConfig: access.config, namespace: "atvp", name: "broken", minReplicas: 0, maxReplicas: 2 });
    await assert.rejects(bad.scaleUp(2), (err: unknown) => err instanceof KubeApiError && err.status === 422 && /statefulset atvp\/broken: patch spec\.replicas to 2 failed with HTTP 422: .*is invalid/.test(err.message));
    const missing = new StatefulSetScaler({ kubeConfig: access.config, namespace: "atvp", name: "nope", minReplicas: 0, maxReplicas: 2 });
    await assert.rejects(missing.scaleUp(1), /statefulset atvp\/nope: get failed with HTTP 404/);
    assert.throws(() => new StatefulSetScaler({ kubeConfig: access.config, namespace: "atvp", name: "x", minReplicas: 3, maxReplicas: 2 }), KubeConfigError);
  } finally {
    await api.close();
  }
});

test("configuration: in cluster from the service account (namespace from its file), or a kubeconfig file", () => {
  const root = join(tmp.path, "pod-fs");
  const sa = root + SERVICE_ACCOUNT_DIR;
  mkdirSync(sa, { recursive: true });
  writeFileSync(join(sa, "token"), "sa-token");
  writeFileSync(join(sa, "ca.crt"), "");
  writeFileSync(join(sa, "namespace"), "pruning\n");
  const saved = { host: process.env["KUBERNETES_SERVICE_HOST"], port: process.env["KUBERNETES_SERVICE_PORT"] };
  process.env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1";
  process.env["KUBERNETES_SERVICE_PORT"] = "443";
  try {
    const a = loadKubeAccess({ pathPrefix: root });
    assert.deepEqual({ server: a.server, namespace: a.namespace, inCluster: a.inCluster }, { server: "https://10.96.0.1:443", namespace: "pruning", inCluster: true });
    assert.equal(a.config.getCurrentCluster()!.caFile, join(sa, "ca.crt"));
    assert.equal(loadKubeAccess({ pathPrefix: root, namespace: "other" }).namespace, "other");
    assert.throws(() => loadKubeAccess({ pathPrefix: join(tmp.path, "no-such-root") }), (err: unknown) => err instanceof KubeConfigError && /no service account token/.test(err.message));
  } finally {
    for (const [k, v] of [["KUBERNETES_SERVICE_HOST", saved.host], ["KUBERNETES_SERVICE_PORT", saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  assert.throws(() => loadKubeAccess({ env: {} }), (err: unknown) => err instanceof KubeConfigError && /not running in a pod.*--kubeconfig/.test(err.message));
  assert.throws(() => loadKubeAccess({ kubeconfig: join(tmp.path, "missing.yaml") }), (err: unknown) => err instanceof KubeConfigError && err.subject.endsWith("missing.yaml"));
  const file = join(tmp.path, "kubeconfig-ns.yaml");
  writeFileSync(file, JSON.stringify({
    apiVersion: "v1", kind: "Config", "current-context": "c",
    clusters: [{ name: "k", cluster: { server: "https://k.example:6443" } }], users: [{ name: "u", user: { token: "t" } }],
    contexts: [{ name: "c", context: { cluster: "k", user: "u", namespace: "from-context" } }],
  }));
  const k = loadKubeAccess({ kubeconfig: file });
  assert.deepEqual({ server: k.server, namespace: k.namespace, inCluster: k.inCluster }, { server: "https://k.example:6443", namespace: "from-context", inCluster: false });
});

test("GPU memory: nvidia-smi's first GPU in bytes; absent or hung, host memory (with a warning for cuda)", async () => {
  const bin = join(tmp.path, "bin");
  mkdirSync(bin, { recursive: true });
  const script = (name: string, body: string) => {
    const p = join(bin, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };
  const smi = script("nvidia-smi", `[ "$1" = "--query-gpu=memory.total" ] && [ "$2" = "--format=csv,noheader,nounits" ] || exit 9\necho 81559\necho 40960`);
  const hung = script("hung-smi", "exec sleep 10");
  const failing = script("failing-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9");
  assert.equal(await gpuMemoryBytes({ command: smi }), 81559 * 1024 * 1024);
  assert.equal(await gpuMemoryBytes({ command: join(bin, "absent") }), undefined);
  assert.equal(await gpuMemoryBytes({ command: failing }), undefined);
  const started = Date.now();
  assert.equal(await gpuMemoryBytes({ command: hung, timeoutMs: 200 }), undefined);
  assert.ok(Date.now() - started < 5000, "the query is bounded in time");
  const warnings: string[] = [];
  assert.equal(await deviceMemoryBytes("cuda", (m) => warnings.push(m), { command: smi }), 81559 * 1024 * 1024);
  assert.equal(await deviceMemoryBytes("auto", (m) => warnings.push(m), { command: smi }), 81559 * 1024 * 1024);
  assert.equal(await deviceMemoryBytes("cpu", (m) => warnings.push(m), { command: smi }), totalmem());
  assert.equal(warnings.length, 0);
  assert.equal(await deviceMemoryBytes("auto", (m) => warnings.push(m), { command: join(bin, "absent") }), totalmem());
  assert.equal(warnings.length, 0);
  assert.equal(await deviceMemoryBytes("cuda", (m) => warnings.push(m), { command: join(bin, "absent") }), totalmem());
  assert.match(warnings.join(), /device cuda but .*absent reported no GPU memory; offering host memory/);
});

/** Real workers on 127.0.0.1, a real nats-server, a coordinator in Kubernetes mode against `api`. */
async function k8sCluster(api: FakeKubeApi, workers: number, kubernetes: Partial<KubernetesOptions> = {}) {
  const nats = await startNatsServer({ dir: join(tmp.path, `nats-${++counter}`) });
  natsServers.push(nats);
  const ws: WorkerHandle[] = [];
  for (let i = 0; i < workers; i++) ws.push(await startWorker({ threads: 1, log: () => {} }));
  const logs: string[] = [];
  const coordinator = await startCoordinator({
    nats: nats.url, workers: [], workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], log: (m) => logs.push(m),
    kubernetes: { labelSelector: SEL, kubeconfig: kubeconfigFor(api), backoff: FAST, ...kubernetes },
  });
  const client = jobClient(coordinator.address);
  return {
    ws, coordinator, client, logs,
    port: (i: number) => Number(ws[i]!.address.split(":")[1]),
    async close() {
      client.close();
      await coordinator.close();
      for (const w of ws) await w.close();
    },
  };
}

function jobSpec(extra: Record<string, unknown> = {}) {
  return { model: model.model, calib: model.calib, out: join(tmp.path, `out-${++counter}`), method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential", ...extra };
}

test("a worker pod DELETED mid-job: its shard is moved off at once and the job succeeds with the same bytes", async () => {
  const api = await FakeKubeApi.start();
  const c = await k8sCluster(api, 3);
  try {
    for (let i = 0; i < 3; i++) api.putPod(workerPod(`atvp-worker-${i}`, c.port(i)));
    await c.coordinator.pool.waitForReady(3, 10_000);
    assert.deepEqual(c.coordinator.pool.ready().map((w) => w.address).sort(), c.ws.map((w) => w.address).sort());
    const s = jobSpec();
    const { job } = await c.client.submitJob({ spec: s });
    let victim: { shard: number; address: string; worker: WorkerHandle } | undefined;
    let movedWhileAlive = false;
    const result = await waitForJob(c.client, job!.id, 60_000, async (e) => {
      if (!victim && e.event.case === "blockFinished") {
        // The last shard is still busy: its blocks come after the one just finished.
        const shards = (await c.client.getJob({ id: job!.id })).shards;
        const busy = shards.filter((x) => x.blocksDone < x.endBlock - x.firstBlock);
        const shard = busy.at(-1)!;
        const i = c.ws.findIndex((w) => w.address === shard.worker);
        victim = { shard: shard.index, address: shard.worker, worker: c.ws[i]! };
        api.deletePod(`atvp-worker-${i}`);
      } else if (victim && !movedWhileAlive && e.event.case === "shardAssigned" && e.event.value.shard === victim.shard && e.event.value.attempt > 1) {
        // The coordinator gave the shard up on the DELETED event alone: its worker still runs.
        movedWhileAlive = true;
        await victim.worker.close();
      }
    });
    const final = await c.client.getJob({ id: job!.id });
    assert.ok(victim, "a pod must be deleted mid-job");
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.ok(movedWhileAlive, "the shard of the deleted pod was reassigned before its worker stopped");
    const moved = final.shards.find((x) => x.index === victim!.shard)!;
    assert.ok(moved.attempts > 1);
    assert.notEqual(moved.worker, victim.address);
    assert.equal(final.blocksDone, 4);
    assert.ok(!c.coordinator.pool.ready().some((w) => w.address === victim!.address));
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference), "bit-identical to pruneModel");
  } finally {
    await c.close();
    await api.close();
  }
});

test("a job asking for more workers than ready scales the StatefulSet up (to max), then back to min when idle", async () => {
  const api = await FakeKubeApi.start();
  api.statefulSets.set("atvp/atvp-worker", statefulSet(1));
  const c = await k8sCluster(api, 2, { statefulSet: "atvp-worker", minReplicas: 1, maxReplicas: 2, scaleDownDelayMs: 0, scaleUpWaitMs: 20_000 });
  try {
    // The StatefulSet controller's part: one pod per replica.
    const podNames = new Set<string>();
    const reconcilePods = (replicas: number) => {
      for (let i = 0; i < 2; i++) {
        const name = `atvp-worker-${i}`;
        if (i < replicas && !podNames.has(name)) { api.putPod(workerPod(name, c.port(i))); podNames.add(name); }
        if (i >= replicas && podNames.has(name)) { api.deletePod(name); podNames.delete(name); }
      }
    };
    api.onScale = (_name, replicas) => reconcilePods(replicas);
    reconcilePods(1);
    await c.coordinator.pool.waitForReady(1, 10_000);
    const s = jobSpec({ workers: 3 });
    const { job } = await c.client.submitJob({ spec: s });
    const result = await waitForJob(c.client, job!.id, 60_000);
    const final = await c.client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.equal(final.shards.length, 2, "planned over the pod the scale-up added");
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference), "bit-identical to pruneModel");
    const patches = await api.waitForRequests((r) => r.method === "PATCH", 2);
    assert.deepEqual(patches.map((p) => ({ path: p.path, type: p.headers["content-type"], body: JSON.parse(p.body) })), [
      { path: STS_PATH, type: "application/merge-patch+json", body: { spec: { replicas: 2 } } },
      { path: STS_PATH, type: "application/merge-patch+json", body: { spec: { replicas: 1 } } },
    ]);
    const stored = api.statefulSets.get("atvp/atvp-worker")!;
    assert.doesNotThrow(() => new StatefulSet(stored as never).validate());
    await until(() => c.coordinator.pool.ready().length === 1, "the scaled-down pod to leave the pool");
  } finally {
    await c.close();
    await api.close();
  }
});

test("coordinator flags: --k8s-namespace --k8s-selector --k8s-worker-port --kubeconfig find the workers (no --worker)", async () => {
  const api = await FakeKubeApi.start();
  const nats = await startNatsServer({ dir: join(tmp.path, `nats-${++counter}`) });
  natsServers.push(nats);
  const worker = await startWorker({ threads: 1, log: () => {} });
  const port = Number(worker.address.split(":")[1]);
  const kubeconfig = kubeconfigFor(api);
  const base = ["--nats", nats.url, "--work-root", join(tmp.path, "jobs"), "--allow-root", tmp.path, "--kubeconfig", kubeconfig];
  // The pod names its port "rpc", so only the flag's number reaches the worker.
  api.putPod(workerPod("atvp-worker-0", 1, { portName: "rpc" }));
  const coordinator = await startChild("coordinator", [...base, "--k8s-namespace", "atvp", "--k8s-selector", "app.kubernetes.io/component=worker", "--k8s-worker-port", String(port)]);
  const client = jobClient(coordinator.address);
  try {
    const [list] = await api.waitForRequests(isList);
    assert.deepEqual(list!.query, { labelSelector: "app.kubernetes.io/component=worker" });
    const s = jobSpec();
    const { job } = await client.submitJob({ spec: s });
    const result = await waitForJob(client, job!.id, 60_000);
    const final = await client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.deepEqual(final.shards.map((x) => x.worker), [`127.0.0.1:${port}`]);
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference));
    await assert.rejects(startChild("coordinator", [...base, "--k8s-selector", SEL, "--k8s-statefulset", "atvp-worker"]), /--k8s-statefulset needs --k8s-max-replicas/);
    await assert.rejects(startChild("coordinator", [...base.slice(0, -2), "--k8s-worker-port", "7070"]), /--k8s-worker-port needs Kubernetes mode/);
  } finally {
    client.close();
    await coordinator.kill("SIGTERM");
    await worker.close();
    await api.close();
  }
});
