// PruneJob objects run by a real coordinator (--watch-prunejobs) on real workers, against the
// fake API server: list then watch, the finalizer, status subresource updates through to
// SUCCEEDED, a spec the API refuses as a status condition, deletion mid-job (cancel, then the
// finalizer released), a 410 Gone relist, and a coordinator restart that resumes the job
// without running it twice.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator, type CoordinatorHandle } from "../../services/coordinator/src/coordinator.js";
import { FINALIZER, jobIdFor } from "../../services/coordinator/src/k8s/pruneJobController.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { FakeKubeApi, type CustomObject } from "../support/fakeKubeApi.js";
import { tempDir } from "../support/fixtures.js";
import { smallJobWithReference, type SmallJob } from "../support/smallJob.js";
import { jobClient, startChild } from "../support/cluster.js";

const PATH = "/apis/atvprune.dev/v1alpha1/namespaces/atvp/prunejobs";
const tmp = tempDir("prunejobs");
let model: SmallJob;
let api: FakeKubeApi;
let kubeconfig: string;
const workers: WorkerHandle[] = [];
const natsServers: NatsServerHandle[] = [];
let counter = 0;

before(async () => {
  model = await smallJobWithReference(tmp.path);
  for (let i = 0; i < 2; i++) workers.push(await startWorker({ threads: 1, log: () => {} }));
});
after(async () => {
  for (const w of workers) await w.close();
  for (const n of natsServers) await n.stop();
  tmp.cleanup();
});

async function freshApi(): Promise<FakeKubeApi> {
  await api?.close();
  api = await FakeKubeApi.start("atvp");
  kubeconfig = join(tmp.path, `kubeconfig-${++counter}.json`);
  api.writeKubeconfig(kubeconfig);
  return api;
}

async function freshNats(): Promise<NatsServerHandle> {
  const n = await startNatsServer({ dir: join(tmp.path, `nats-${++counter}`) });
  natsServers.push(n);
  return n;
}

/** A coordinator watching PruneJobs; without workers its jobs wait RUNNING for one (a job "mid-run"). */
function coordinator(nats: NatsServerHandle, withWorkers: boolean): Promise<CoordinatorHandle> {
  return startCoordinator({
    nats: nats.url, workers: withWorkers ? workers.map((w) => w.address) : [], workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path],
    pruneJobs: { kubeconfig, namespace: "atvp" }, reassignTimeoutMs: 60_000, log: () => {},
  });
}

function spec(extra: Record<string, unknown> = {}) {
  return { model: model.model, calib: model.calib, out: join(tmp.path, `out-${++counter}`), method: "atv", sparsity: 0.5, alpha: 4, ...extra };
}

const statusOf = (o: CustomObject | undefined) => (o?.status ?? {}) as { state?: string; jobId?: string; blocksDone?: number; blocksTotal?: number; lastEvent?: string; output?: string; reason?: string; conditions?: Array<{ type: string; status: string; reason?: string; message?: string }> };
const statusPatches = (name: string) => api.requests.filter((r) => r.method === "PATCH" && r.path === `${PATH}/${name}/status`).map((r) => JSON.parse(r.body).status as ReturnType<typeof statusOf>);

test("a PruneJob runs as a job: finalizer, status through RUNNING to SUCCEEDED, output bit-identical to atvp prune", async () => {
  await freshApi();
  const nats = await freshNats();
  const c = await coordinator(nats, true);
  const client = jobClient(c.address);
  try {
    const s = spec();
    const created = api.createPruneJob({ metadata: { name: "pj-ok" }, spec: s });
    const done = await api.waitForPruneJob("pj-ok", (o) => statusOf(o).state === "SUCCEEDED");
    const st = statusOf(done);
    assert.equal(st.jobId, jobIdFor(created.metadata.uid!));
    assert.equal(st.blocksDone, 4);
    assert.equal(st.blocksTotal, 4);
    assert.equal(st.output, s.out);
    assert.deepEqual(st.conditions!.map((x) => [x.type, x.status]), [["Accepted", "True"], ["Succeeded", "True"]]);
    assert.deepEqual(readFileSync(join(s.out, "model.onnx.data")), model.reference);
    // The finalizer held the object while the job ran, and is released once it stopped.
    await api.waitForPruneJob("pj-ok", (o) => (o?.metadata.finalizers ?? []).length === 0);
    const patches = api.requests.filter((r) => r.method === "PATCH" && r.path === `${PATH}/pj-ok`).map((r) => JSON.parse(r.body).metadata.finalizers);
    assert.deepEqual(patches, [[FINALIZER], []]);
    // The status followed the job's events: RUNNING and each block on the way.
    const seen = statusPatches("pj-ok");
    assert.ok(seen.some((p) => p.state === "RUNNING"), JSON.stringify(seen));
    assert.ok(seen.some((p) => /^block 3 .* finished on /.test(p.lastEvent ?? "")), JSON.stringify(seen.map((p) => p.lastEvent)));
    // The same job gRPC clients see.
    const job = await client.getJob({ id: st.jobId! });
    assert.equal(job.state, JobState.SUCCEEDED);
    // list, then a watch from the list's resourceVersion
    const list = api.requests.find((r) => r.method === "GET" && r.path === PATH && r.query["watch"] !== "true")!;
    const watch = api.requests.find((r) => r.path === PATH && r.query["watch"] === "true")!;
    assert.ok(list && watch);
    assert.ok(Number(watch.query["resourceVersion"]) > 0);
  } finally {
    client.close();
    await c.close();
  }
});

test("a spec the API refuses becomes status condition Accepted=False (InvalidSpec), and no job", async () => {
  await freshApi();
  const nats = await freshNats();
  const c = await coordinator(nats, true);
  const client = jobClient(c.address);
  try {
    api.createPruneJob({ metadata: { name: "pj-outside" }, spec: spec({ out: "/etc/atvp-out" }) });
    api.createPruneJob({ metadata: { name: "pj-sparsity" }, spec: spec({ sparsity: 1.5 }) });
    api.createPruneJob({ metadata: { name: "pj-field" }, spec: spec({ sparsty: 0.5 }) });
    for (const [name, message] of [["pj-outside", /spec\.out: .* outside the allowed roots/], ["pj-sparsity", /spec\.sparsity: must be in \[0, 1\)/], ["pj-field", /spec: .*sparsty/]] as const) {
      const o = await api.waitForPruneJob(name, (x) => statusOf(x).state === "FAILED");
      const cond = statusOf(o).conditions!.find((x) => x.type === "Accepted")!;
      assert.equal(cond.status, "False");
      assert.equal(cond.reason, "InvalidSpec");
      assert.match(cond.message!, message);
      assert.equal(statusOf(o).jobId, undefined);
      await api.waitForPruneJob(name, (x) => (x?.metadata.finalizers ?? []).length === 0);
    }
    assert.deepEqual((await client.listJobs({})).jobs, []);
    // Deleting a refused object needs nothing from the coordinator.
    api.deletePruneJob("pj-sparsity");
    assert.equal(api.pruneJob("pj-sparsity"), undefined);
  } finally {
    client.close();
    await c.close();
  }
});

test("deleting a PruneJob mid-job cancels the job; the finalizer keeps the object until the job has stopped", async () => {
  await freshApi();
  const nats = await freshNats();
  const c = await coordinator(nats, false);
  const client = jobClient(c.address);
  try {
    api.createPruneJob({ metadata: { name: "pj-del" }, spec: spec() });
    const running = await api.waitForPruneJob("pj-del", (o) => statusOf(o).state === "RUNNING");
    assert.deepEqual(running!.metadata.finalizers, [FINALIZER]);
    const jobId = statusOf(running).jobId!;
    const marked = api.deletePruneJob("pj-del");
    assert.ok(marked?.metadata.deletionTimestamp, "held by the finalizer");
    await api.waitForPruneJob("pj-del", (o) => o === undefined);
    const job = await client.getJob({ id: jobId });
    assert.equal(job.state, JobState.CANCELLED);
    assert.match(job.reason, /PruneJob atvp\/pj-del was deleted/);
    // The finalizer went only after the status recorded the stop.
    const order = api.requests.filter((r) => r.method === "PATCH" && r.path.startsWith(`${PATH}/pj-del`)).map((r) => (r.path.endsWith("/status") ? `status ${JSON.parse(r.body).status.state}` : "finalizers"));
    const cancelled = order.indexOf("status CANCELLED");
    assert.ok(cancelled >= 0 && order.lastIndexOf("finalizers") > cancelled, order.join(", "));
  } finally {
    client.close();
    await c.close();
  }
});

test("after a 410 Gone the PruneJobs are listed again, and one created meanwhile runs", async () => {
  await freshApi();
  const nats = await freshNats();
  const c = await coordinator(nats, true);
  try {
    await api.waitForRequests((r) => r.path === PATH && r.query["watch"] === "true");
    api.dropWatches();
    api.createPruneJob({ metadata: { name: "pj-relist" }, spec: spec() });
    api.compact();
    await api.waitForPruneJob("pj-relist", (o) => statusOf(o).state === "SUCCEEDED");
    assert.ok(api.requests.some((r) => r.path === PATH && r.query["watch"] === "true" && r.status === 410));
    assert.equal(api.requests.filter((r) => r.method === "GET" && r.path === PATH && r.query["watch"] !== "true").length, 2);
  } finally {
    await c.close();
  }
});

test("a coordinator that may not list PruneJobs does not start, and says which resource", async () => {
  await freshApi();
  const nats = await freshNats();
  await assert.rejects(startCoordinator({
    nats: nats.url, workers: [], workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], pruneJobs: { kubeconfig, namespace: "elsewhere" }, log: () => {},
  }), (err: Error) => /namespace elsewhere prunejobs\.atvprune\.dev: list failed with HTTP 403/.test(err.message));
});

test("the coordinator process takes --watch-prunejobs (with --kubeconfig alone: the context's namespace)", async () => {
  await freshApi();
  const nats = await freshNats();
  const child = await startChild("coordinator", ["--nats", nats.url, "--worker", workers[0]!.address, "--work-root", join(tmp.path, "jobs"), "--allow-root", tmp.path, "--watch-prunejobs", "--kubeconfig", kubeconfig]);
  try {
    api.createPruneJob({ metadata: { name: "pj-cli" }, spec: spec() });
    const done = await api.waitForPruneJob("pj-cli", (o) => statusOf(o).state === "SUCCEEDED");
    assert.deepEqual(readFileSync(join(statusOf(done).output!, "model.onnx.data")), model.reference);
    assert.ok(api.requests.some((r) => r.path === PATH && r.query["watch"] === "true"));
  } finally {
    await child.kill("SIGTERM");
  }
});

test("a restarted coordinator resumes a PruneJob's job and does not run it twice", async () => {
  await freshApi();
  const nats = await freshNats();
  const first = await coordinator(nats, false);
  let jobId: string;
  try {
    api.createPruneJob({ metadata: { name: "pj-restart" }, spec: spec() });
    jobId = statusOf(await api.waitForPruneJob("pj-restart", (o) => statusOf(o).state === "RUNNING")).jobId!;
  } finally {
    await first.close();
  }
  const second = await coordinator(nats, true);
  const client = jobClient(second.address);
  try {
    const done = await api.waitForPruneJob("pj-restart", (o) => statusOf(o).state === "SUCCEEDED");
    assert.equal(statusOf(done).jobId, jobId);
    const jobs = (await client.listJobs({})).jobs;
    assert.deepEqual(jobs.map((j) => j.id), [jobId], "one job, the same one");
    assert.equal(jobs[0]!.state, JobState.SUCCEEDED);
    assert.equal(statusPatches("pj-restart").filter((p) => p.lastEvent === "submitted").length, 1, "submitted once");
    assert.deepEqual(readFileSync(join(statusOf(done).output!, "model.onnx.data")), model.reference);
  } finally {
    client.close();
    await second.close();
    await api.close();
  }
});
