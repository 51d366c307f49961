// The cluster end to end: a real nats-server, real workers and coordinators over gRPC on
// 127.0.0.1. Every job must produce exactly the bytes `atvp prune` writes, whatever the number
// of workers, the propagation, and whatever dies on the way.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator, type CoordinatorHandle } from "../../services/coordinator/src/coordinator.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { jobClient, killShardWorkerAfter, openBlockStarts, startChild, waitForJob, type ChildService, type JobClient } from "../support/cluster.js";

const tmp = tempDir("cluster");
let model: { model: string; calib: string };
const reference = new Map<string, Buffer>();
const referenceReport = new Map<string, { layers: unknown[]; blocks: Record<string, unknown>[] }>();

let natsCount = 0;
const natsServers: NatsServerHandle[] = [];
/** Each test gets its own nats-server, so no job of one test is resumed by another's coordinator. */
async function freshNats(): Promise<NatsServerHandle> {
  const n = await startNatsServer({ dir: join(tmp.path, `nats-${++natsCount}`) });
  natsServers.push(n);
  return n;
}

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 6, hidden: 64, samples: 12, seqLen: 48, imageTokens: 20, seed: 11 });
  model = { model: g.modelPath, calib: g.calibPath };
  for (const propagation of ["sequential", "dense"] as const) {
    const out = join(tmp.path, `ref-${propagation}`);
    await pruneModel({ model: model.model, calib: model.calib, method: "atv", sparsity: 0.5, alpha: 4, propagation, out, threads: 1 });
    reference.set(propagation, readFileSync(join(out, "model.onnx.data")));
    referenceReport.set(propagation, JSON.parse(readFileSync(join(out, "report.json"), "utf8")));
  }
});
after(async () => {
  for (const n of natsServers) await n.stop();
  tmp.cleanup();
});

let counter = 0;
function spec(propagation: "sequential" | "dense", extra: Record<string, unknown> = {}) {
  return { model: model.model, calib: model.calib, out: join(tmp.path, `out-${++counter}`), method: "atv", sparsity: 0.5, alpha: 4, propagation, ...extra };
}

async function inProcessCluster(workers: number, extra: Partial<Parameters<typeof startCoordinator>[0]> = {}, workerLog: (message: string) => void = () => {}) {
  const nats = await freshNats();
  const ws: WorkerHandle[] = [];
  for (let i = 0; i < workers; i++) ws.push(await startWorker({ threads: 1, log: workerLog }));
  const coordinator = await startCoordinator({
    nats: nats.url, workers: ws.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], metricsPort: 0, log: () => {}, ...extra,
  });
  await coordinator.pool.waitForReady(workers, 10_000);
  const client = jobClient(coordinator.address);
  return {
    ws, coordinator, client, nats,
    async close() {
      client.close();
      await coordinator.close();
      for (const w of ws) await w.close();
      await nats.stop(); // (stopped again, harmlessly, in after())
    },
  };
}

for (const workers of [1, 2, 3]) {
  for (const propagation of ["sequential", "dense"] as const) {
    test(`${workers} worker(s), ${propagation}: bit-identical to atvp prune`, async () => {
      const c = await inProcessCluster(workers);
      try {
        const s = spec(propagation);
        const { job } = await c.client.submitJob({ spec: s });
        const result = await waitForJob(c.client, job!.id);
        const final = await c.client.getJob({ id: job!.id });
        assert.equal(result.state, JobState.SUCCEEDED, final.reason);
        assert.equal(final.blocksDone, 6);
        assert.equal(final.shards.length, workers);
        assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get(propagation)!));
        const finished = result.events.filter((e) => e.event.case === "blockFinished");
        assert.equal(finished.length, 6);
        // report.json is built from the progress stream: the same facts as atvp prune's, but timings.
        const report = JSON.parse(readFileSync(join(s.out, "report.json"), "utf8")) as { layers: unknown[]; blocks: Record<string, unknown>[] };
        const ref = referenceReport.get(propagation)!;
        const facts = (b: Record<string, unknown>) => ({ ...b, seconds: 0, tokensPerSecond: 0 });
        assert.deepEqual(report.layers, ref.layers);
        assert.deepEqual(report.blocks.map(facts), ref.blocks.map(facts));
      } finally {
        await c.close();
      }
    });
  }
}

test("a gRPC client that omits sparsity gets the engine's default (0.5), as atvp prune does", async () => {
  const c = await inProcessCluster(1);
  try {
    const { sparsity: _omitted, ...s } = spec("sequential");
    const { job } = await c.client.submitJob({ spec: s });
    const result = await waitForJob(c.client, job!.id);
    assert.equal(result.state, JobState.SUCCEEDED, (await c.client.getJob({ id: job!.id })).reason);
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get("sequential")!));
  } finally {
    await c.close();
  }
});

test("2 workers selecting masks on 2 threads each (spec.mask_threads): bit-identical to atvp prune; past a worker's cores, clamped with a warning", async () => {
  const logs: string[] = [];
  const c = await inProcessCluster(2, {}, (m) => logs.push(m));
  try {
    for (const maskThreads of [2, 1000]) {
      const s = spec("sequential", { maskThreads });
      const { job } = await c.client.submitJob({ spec: s });
      const result = await waitForJob(c.client, job!.id);
      const final = await c.client.getJob({ id: job!.id });
      assert.equal(result.state, JobState.SUCCEEDED, final.reason);
      assert.equal(final.spec?.maskThreads, maskThreads);
      assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get("sequential")!), `mask_threads ${maskThreads}`);
    }
    const cores = availableParallelism();
    // (2 is clamped too on a one-core machine)
    assert.ok(logs.some((m) => m.includes(`warning: mask_threads 1000 is more than this machine's ${cores} cores; using ${cores}`)), logs.join("\n"));
  } finally {
    await c.close();
  }
});

test("a worker killed with SIGKILL mid-job: its shard resumes elsewhere, same bytes", async () => {
  const nats = await freshNats();
  const children: ChildService[] = [];
  for (let i = 0; i < 2; i++) children.push(await startChild("worker", ["--listen", "127.0.0.1:0", "--threads", "1", "--insecure", "--allow-root", tmp.path]));
  const coordinator = await startCoordinator({ nats: nats.url, workers: children.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], log: () => {} });
  const client = jobClient(coordinator.address);
  try {
    await coordinator.pool.waitForReady(2, 10_000);
    // One replica per stage: two stages chained (a lost replica: replicaCluster.test.ts).
    const s = spec("sequential", { replicas: 1 });
    const { job } = await client.submitJob({ spec: s });
    // Kill the worker of the second shard once it has finished its first block.
    const killer = killShardWorkerAfter(client, () => job!.id, 3, children);
    const result = await waitForJob(client, job!.id, 120_000, killer.onEvent);
    const final = await client.getJob({ id: job!.id });
    const killed = killer.killed;
    assert.ok(killed, "the test must kill a worker mid-job");
    // The events say which shard failed where and why, and close its open block_started.
    const failed = result.events.flatMap((e) => (e.event.case === "shardFailed" ? [e.event.value] : []));
    assert.ok(failed.some((f) => f.worker === killed!.address && f.cause === "lost" && f.reason !== ""), JSON.stringify(failed));
    assert.ok(result.events.some((e) => e.event.case === "shardReassigned" && e.event.value.fromWorker === killed!.address));
    assert.deepEqual(openBlockStarts(result.events), []);
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.ok(final.shards.some((x) => x.attempts > 1), "a shard was rerun");
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get("sequential")!));
  } finally {
    client.close();
    await coordinator.close();
    for (const c of children) await c.kill();
  }
});

test("the coordinator killed mid-job: a new coordinator resumes the job from NATS, same bytes", async () => {
  const nats = await freshNats();
  const ws = [await startWorker({ threads: 1, log: () => {} }), await startWorker({ threads: 1, log: () => {} })];
  const args = ["--nats", nats.url, "--work-root", join(tmp.path, "jobs"), "--allow-root", tmp.path, ...ws.flatMap((w) => ["--worker", w.address])];
  let coordinator = await startChild("coordinator", args);
  try {
    let client: JobClient = jobClient(coordinator.address);
    const s = spec("sequential");
    const { job } = await client.submitJob({ spec: s });
    // Until the first block is done (waitForJob would retry a throwing handler until its deadline).
    const watch = client.watchJob({ id: job!.id }, { deadlineMs: 60_000 });
    try {
      for await (const e of watch) if (e.event.case === "blockFinished") break;
    } finally {
      watch.cancel();
    }
    await coordinator.kill("SIGKILL");
    client.close();
    coordinator = await startChild("coordinator", args);
    client = jobClient(coordinator.address);
    const result = await waitForJob(client, job!.id);
    const final = await client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get("sequential")!));
    assert.deepEqual(openBlockStarts(result.events), []);
    client.close();
  } finally {
    await coordinator.kill("SIGTERM");
    for (const w of ws) await w.close();
  }
});

test("NATS restarted mid-job: the job goes on and its state catches up", async () => {
  const c = await inProcessCluster(2);
  try {
    const s = spec("dense");
    const { job } = await c.client.submitJob({ spec: s });
    let restarted = false;
    const result = await waitForJob(c.client, job!.id, 120_000, async (e) => {
      if (!restarted && e.event.case === "blockFinished") { restarted = true; await c.nats.restart(); }
    });
    assert.ok(restarted);
    assert.equal(result.state, JobState.SUCCEEDED);
    const final = await c.client.getJob({ id: job!.id });
    assert.equal(final.state, JobState.SUCCEEDED);
    assert.equal(final.blocksDone, 6);
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get("dense")!));
  } finally {
    await c.close();
  }
});

test("cancel: the job ends CANCELLED and leaves no model behind", async () => {
  const c = await inProcessCluster(2);
  try {
    const s = spec("sequential");
    const { job } = await c.client.submitJob({ spec: s });
    const result = await waitForJob(c.client, job!.id, 60_000, async (e) => {
      if (e.event.case === "blockStarted") await c.client.cancelJob({ id: job!.id, reason: "test" }).catch(() => {});
    });
    assert.equal(result.state, JobState.CANCELLED);
    assert.deepEqual(openBlockStarts(result.events), [], "the cancelled blocks are closed (block_aborted)");
    const final = await c.client.getJob({ id: job!.id });
    assert.equal(final.reason, "test");
    assert.ok(!existsSync(join(s.out, "model.onnx")));
    await assert.rejects(c.client.cancelJob({ id: job!.id }), (e: { code: number }) => e.code === status.FAILED_PRECONDITION);
  } finally {
    await c.close();
  }
});

test("invalid requests get the right status and name the field", async () => {
  const c = await inProcessCluster(1, { token: "s3cret" });
  const { bearerMetadata } = await import("../../services/rpc/bearerAuth.js");
  const md = bearerMetadata("s3cret");
  try {
    const expect = async (p: Promise<unknown>, code: number, field: RegExp) =>
      assert.rejects(p, (e: { code: number; details: string }) => e.code === code && field.test(e.details));
    await expect(c.client.listJobs({}), status.UNAUTHENTICATED, /bearer/i);
    await expect(c.client.listJobs({}, { metadata: bearerMetadata("wrong") }), status.UNAUTHENTICATED, /bearer/i);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), sparsity: 1.5 } }, { metadata: md }), status.INVALID_ARGUMENT, /sparsity/);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), method: "obs" } }, { metadata: md }), status.INVALID_ARGUMENT, /method/);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), pattern: "5:2" } }, { metadata: md }), status.INVALID_ARGUMENT, /pattern/);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), calib: "" } }, { metadata: md }), status.INVALID_ARGUMENT, /calib/);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), model: "/etc/passwd" } }, { metadata: md }), status.PERMISSION_DENIED, /model/);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), out: join(tmp.path, "../escape") } }, { metadata: md }), status.PERMISSION_DENIED, /out/);
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), model: join(tmp.path, "missing.onnx") } }, { metadata: md }), status.NOT_FOUND, /model/);
    const sneaky = join(tmp.path, "sneaky.jsonl");
    writeFileSync(sneaky, JSON.stringify({ inputs_embeds: "../../../../etc/hostname", image_mask: [0] }) + "\n");
    await expect(c.client.submitJob({ spec: { ...spec("sequential"), calib: sneaky } }, { metadata: md }), status.PERMISSION_DENIED, /spec\.calib/);
    await expect(c.client.getJob({ id: "job-nope" }, { metadata: md }), status.NOT_FOUND, /job-nope/);
    await expect(c.client.getJob({ id: "" }, { metadata: md }), status.INVALID_ARGUMENT, /id/);
    await expect(c.client.cancelJob({ id: "job-nope" }, { metadata: md }), status.NOT_FOUND, /job-nope/);
  } finally {
    await c.close();
  }
});

test("/metrics parses and its counters match the finished job", async () => {
  const c = await inProcessCluster(2);
  try {
    const s = spec("sequential");
    const { job } = await c.client.submitJob({ spec: s });
    assert.equal((await waitForJob(c.client, job!.id)).state, JobState.SUCCEEDED);
    const report = JSON.parse(readFileSync(join(s.out, "report.json"), "utf8"));
    const text = await (await fetch(`http://127.0.0.1:${c.coordinator.metricsPort}/metrics`)).text();
    const value = (name: string, labels = "") => {
      const line = text.split("\n").find((l) => l.startsWith(name + labels + " "));
      assert.ok(line, `${name}${labels} missing`);
      return Number(line!.split(" ")[1]);
    };
    assert.equal(value("atvp_blocks_pruned_total"), 6);
    assert.equal(value("atvp_params_pruned_total"), report.totals.pruned);
    // Tokens once per job, as report.json counts them; tokens x blocks under their own name.
    assert.ok(report.totals.tokens > 0);
    assert.equal(value("atvp_calibration_tokens_total"), report.totals.tokens);
    assert.equal(report.totals.tokenPasses, 6 * report.totals.tokens);
    assert.equal(value("atvp_calibration_token_passes_total"), report.totals.tokenPasses);
    assert.equal(value("atvp_block_duration_seconds_count"), 6);
    assert.equal(value("atvp_jobs", '{state="SUCCEEDED"}'), 1);
    assert.equal(value("atvp_workers_ready"), 2);
    assert.ok(text.includes("process_cpu_seconds_total"));
    assert.equal((await fetch(`http://127.0.0.1:${c.coordinator.metricsPort}/healthz`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${c.coordinator.metricsPort}/readyz`)).status, 200);
  } finally {
    await c.close();
  }
});

test("mutual TLS on every connection (client, coordinator, workers, worker to worker); a client without a certificate is refused", async () => {
  const { TestPki } = await import("../support/certs.js");
  const { channelCredentials } = await import("../../services/rpc/credentials.js");
  const { mkdirSync } = await import("node:fs");
  const pkiDir = join(tmp.path, "pki");
  mkdirSync(pkiDir, { recursive: true });
  const pki = new TestPki(pkiDir);
  pki.ca("ca");
  // One certificate per service, usable as server and as client (workers pull from each other).
  pki.leaf("node", "ca", "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  pki.leaf("user", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  const nodeTls = { ca: pki.file("ca.crt"), cert: pki.file("node.crt"), key: pki.file("node.key") };
  const nats = await freshNats();
  // Workers ask for the cluster token too and confine paths themselves: the coordinator and
  // the downstream worker (pulling states) must present both certificate and token.
  const token = "cluster-secret";
  const workerAccess = { token, allowedRoots: [tmp.path], workRoots: [join(tmp.path, "jobs")] };
  const ws = [
    await startWorker({ threads: 1, log: () => {}, tls: { ...nodeTls, requireClientCert: true }, ...workerAccess }),
    await startWorker({ threads: 1, log: () => {}, tls: { ...nodeTls, requireClientCert: true }, ...workerAccess }),
  ];
  const coordinator = await startCoordinator({
    nats: nats.url, workers: ws.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], log: () => {},
    tls: { ...nodeTls, requireClientCert: true }, workerTls: nodeTls, token,
  });
  const client = jobClient(coordinator.address, channelCredentials({ ca: pki.file("ca.crt"), cert: pki.file("user.crt"), key: pki.file("user.key") }));
  const { bearerClientOptions, bearerMetadata } = await import("../../services/rpc/bearerAuth.js");
  const authed = jobClient(coordinator.address, channelCredentials({ ca: pki.file("ca.crt"), cert: pki.file("user.crt"), key: pki.file("user.key") }), bearerClientOptions(token));
  const noCert = jobClient(coordinator.address, channelCredentials({ ca: pki.file("ca.crt") }));
  const plain = jobClient(coordinator.address);
  try {
    assert.equal((await coordinator.pool.waitForReady(2, 10_000)).length, 2);
    const s = spec("sequential");
    const { job } = await client.submitJob({ spec: s }, { metadata: bearerMetadata(token) });
    assert.equal((await waitForJob(authed, job!.id)).state, JobState.SUCCEEDED);
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(reference.get("sequential")!));
    await assert.rejects(noCert.listJobs({}, { deadlineMs: 5000 }), (e: { code: number }) => e.code === status.UNAVAILABLE);
    await assert.rejects(plain.listJobs({}, { deadlineMs: 5000 }), (e: { code: number }) => e.code === status.UNAVAILABLE);
  } finally {
    client.close(); authed.close(); noCert.close(); plain.close();
    await coordinator.close();
    for (const w of ws) await w.close();
  }
});
