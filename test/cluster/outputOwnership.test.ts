// Issue 7, "Why" 1-3 on a real cluster (nats-server, in-process workers and coordinator on
// 127.0.0.1): two jobs on one output folder, --force into the source model's folder, and an
// external-data file linked out of the allowed root. Each was reproduced first: before the fix
// the second job was accepted and corrupted the first's data, the model was deleted, and the
// linked bytes were copied into the output.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator } from "../../services/coordinator/src/coordinator.js";
import { connectNats } from "../../services/coordinator/src/state/natsConnection.js";
import { OutputLeases } from "../../services/coordinator/src/state/outputLeases.js";
import { OutputLockedError } from "../../services/core/src/errors.js";
import { acquireOutputLock } from "../../services/core/src/onnx/outputLock.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { CLI, tempDir } from "../support/fixtures.js";
import { jobClient, waitForJob } from "../support/cluster.js";

const tmp = tempDir("ownership");
/** The allowed root of every coordinator here; `outside` is next to it, not in it. */
const root = join(tmp.path, "root");
const outside = join(tmp.path, "outside");
let model: { model: string; calib: string; dir: string };
let reference: Buffer;
let nats: NatsServerHandle;

before(async () => {
  mkdirSync(outside, { recursive: true });
  const g = await generateModel({ outDir: join(root, "model"), layers: 4, hidden: 64, samples: 6, seqLen: 32, imageTokens: 10, seed: 3 });
  model = { model: g.modelPath, calib: g.calibPath, dir: join(root, "model") };
  const out = join(tmp.path, "ref");
  await pruneModel({ model: model.model, calib: model.calib, method: "atv", sparsity: 0.5, out, threads: 1 });
  reference = readFileSync(join(out, "model.onnx.data"));
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
});
after(async () => {
  await nats?.stop();
  tmp.cleanup();
});

async function cluster(workers = 2) {
  const ws: WorkerHandle[] = [];
  for (let i = 0; i < workers; i++) ws.push(await startWorker({ threads: 1, log: () => {} }));
  const coordinator = await startCoordinator({ nats: nats.url, workers: ws.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [root], log: () => {} });
  await coordinator.pool.waitForReady(workers, 10_000);
  const client = jobClient(coordinator.address);
  return {
    coordinator, client,
    async close() {
      client.close();
      await coordinator.close();
      for (const w of ws) await w.close();
    },
  };
}

const digest = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
const job = (out: string, extra: Record<string, unknown> = {}) => ({ model: model.model, calib: model.calib, out, method: "atv", sparsity: 0.5, ...extra });

test("Why 1: a second job on a leased output folder is refused (FAILED_PRECONDITION naming the holder), even with --force; the first job's bytes are intact", async () => {
  const c = await cluster();
  try {
    const out = join(root, "shared-out");
    const { job: a } = await c.client.submitJob({ spec: job(out) });
    for (const force of [false, true]) {
      await assert.rejects(c.client.submitJob({ spec: job(out, { force }) }), (e: { code: number; details: string }) =>
        e.code === status.FAILED_PRECONDITION && e.details.includes(a!.id) && e.details.includes(out));
    }
    const result = await waitForJob(c.client, a!.id);
    assert.equal(result.state, JobState.SUCCEEDED, (await c.client.getJob({ id: a!.id })).reason);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(reference), "job A's output is what atvp prune writes");
    // Released at the end: the folder can be written again (with --force, it is not empty).
    const { job: b } = await c.client.submitJob({ spec: job(out, { force: true }) });
    assert.equal((await waitForJob(c.client, b!.id)).state, JobState.SUCCEEDED);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(reference));
  } finally {
    await c.close();
  }
});

test("a folder an `atvp prune` on this machine is writing (its lock file) is refused at submit, naming the process", async () => {
  const c = await cluster(1);
  const out = join(root, "locked-out");
  const lock = await acquireOutputLock(out);
  try {
    await assert.rejects(c.client.submitJob({ spec: job(out, { force: true }) }), (e: { code: number; details: string }) =>
      e.code === status.FAILED_PRECONDITION && e.details.includes(`pid ${process.pid}`) && e.details.includes(out));
  } finally {
    await lock.release();
    await c.close();
  }
});

test("a restarted coordinator resuming a job keeps that job's lease: a second job on its folder is still refused", async () => {
  const ws = [await startWorker({ threads: 1, log: () => {} })];
  const options = { nats: nats.url, workers: ws.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [root], log: () => {} };
  let coordinator = await startCoordinator(options);
  let client = jobClient(coordinator.address);
  const out = join(root, "restart-out");
  // Larger, so the job is surely still running after its first block.
  const big = await generateModel({ outDir: join(root, "big"), layers: 12, hidden: 128, samples: 8, seqLen: 64, imageTokens: 20, seed: 4 });
  try {
    const { job: a } = await client.submitJob({ spec: job(out, { model: big.modelPath, calib: big.calibPath }) });
    // Polled, not watched: an open watch stream would hold the coordinator's shutdown.
    for (let i = 0; i < 600 && (await client.getJob({ id: a!.id })).blocksDone < 1; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await client.getJob({ id: a!.id })).state, JobState.RUNNING, "the job is mid-way when its coordinator stops");
    client.close();
    await coordinator.close(); // leaves the job RUNNING for the next coordinator
    // A fresh worker too: the old one is still busy with the shard the old coordinator gave it.
    await ws.pop()!.close();
    ws.push(await startWorker({ threads: 1, log: () => {} }));
    coordinator = await startCoordinator({ ...options, workers: ws.map((w) => w.address) });
    client = jobClient(coordinator.address);
    await assert.rejects(client.submitJob({ spec: job(out, { model: big.modelPath, calib: big.calibPath, force: true }) }), (e: { code: number; details: string }) =>
      e.code === status.FAILED_PRECONDITION && e.details.includes(a!.id));
    const result = await waitForJob(client, a!.id);
    assert.equal(result.state, JobState.SUCCEEDED, (await client.getJob({ id: a!.id })).reason);
  } finally {
    client.close();
    await coordinator.close();
    for (const w of ws) await w.close();
  }
});

test("while NATS does not answer, a job is still accepted and a second job on its folder still refused (this coordinator's own leases)", async () => {
  const paused = await startNatsServer({ dir: join(tmp.path, "nats-paused") });
  const ws = [await startWorker({ threads: 1, log: () => {} })];
  const coordinator = await startCoordinator({ nats: paused.url, workers: ws.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [root], log: () => {} });
  const client = jobClient(coordinator.address);
  const out = join(root, "paused-out");
  const pid = paused.pid;
  try {
    await coordinator.pool.waitForReady(1, 10_000);
    process.kill(pid, "SIGSTOP");
    let a: string;
    try {
      a = (await client.submitJob({ spec: job(out) })).job!.id;
      await assert.rejects(client.submitJob({ spec: job(out, { force: true }) }), (e: { code: number; details: string }) =>
        e.code === status.FAILED_PRECONDITION && e.details.includes(a));
    } finally {
      process.kill(pid, "SIGCONT");
    }
    const result = await waitForJob(client, a);
    assert.equal(result.state, JobState.SUCCEEDED, (await client.getJob({ id: a })).reason);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(reference));
  } finally {
    client.close();
    await coordinator.close();
    for (const w of ws) await w.close();
    await paused.stop();
  }
});

test("Why 2: --force into the source model's own folder is refused before anything is deleted", async () => {
  const c = await cluster(1);
  try {
    const before = new Map(readdirSync(model.dir).filter((f) => f.startsWith("model")).map((f) => [f, digest(join(model.dir, f))]));
    await assert.rejects(c.client.submitJob({ spec: job(model.dir, { force: true }) }), (e: { code: number; details: string }) =>
      e.code === status.FAILED_PRECONDITION && /spec\.out: .*holds an input of the job/.test(e.details));
    for (const [f, d] of before) assert.equal(digest(join(model.dir, f)), d, `${f} untouched`);
  } finally {
    await c.close();
  }
});

test("Why 3: an external-data file linked out of the allowed root is refused at submit, and nothing is written", async () => {
  const c = await cluster(1);
  try {
    const evil = join(root, "evil");
    mkdirSync(evil, { recursive: true });
    copyFileSync(model.model, join(evil, "model.onnx"));
    copyFileSync(join(model.dir, "model.onnx.data"), join(outside, "model.onnx.data"));
    symlinkSync(join(outside, "model.onnx.data"), join(evil, "model.onnx.data"));
    const out = join(root, "evil-out");
    await assert.rejects(c.client.submitJob({ spec: job(out, { model: join(evil, "model.onnx"), method: "magnitude", calib: "" }) }), (e: { code: number; details: string }) =>
      e.code === status.PERMISSION_DENIED && /spec\.model \(external data model\.onnx\.data\): .* is outside the allowed roots/.test(e.details));
    assert.ok(!existsSync(out), "no output folder");
  } finally {
    await c.close();
  }
});

test("atvp cancel --json waits for and prints the final state (CANCELLED, not RUNNING)", async () => {
  // No worker ever becomes ready, so the job stays RUNNING (waiting for one) until it is cancelled.
  const coordinator = await startCoordinator({ nats: nats.url, workers: ["127.0.0.1:1"], workRoot: join(tmp.path, "jobs"), allowedRoots: [root], log: () => {}, reassignTimeoutMs: 120_000 });
  const client = jobClient(coordinator.address);
  try {
    const { job: j } = await client.submitJob({ spec: job(join(root, "cancel-out")) });
    let cli: Promise<{ code: number | null; stdout: string; stderr: string }> | undefined;
    const result = await waitForJob(client, j!.id, 60_000, (e) => {
      if (!cli && e.event.case === "stateChanged" && e.event.value.state === JobState.RUNNING) {
        cli = new Promise((resolve) => {
          const p = spawn(process.execPath, [CLI, "cancel", j!.id, "--json", "--coordinator", coordinator.address, "--reason", "test"], { stdio: ["ignore", "pipe", "pipe"] });
          let stdout = "";
          let stderr = "";
          p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
          p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
          p.on("exit", (code) => resolve({ code, stdout, stderr }));
        });
      }
    });
    assert.equal(result.state, JobState.CANCELLED);
    assert.ok(cli, "the job was RUNNING");
    const r = await cli!;
    assert.equal(r.code, 0, r.stderr);
    const printed = JSON.parse(r.stdout) as { state: string; reason: string };
    assert.equal(printed.state, "CANCELLED");
    assert.equal(printed.reason, "test");
    assert.ok(!existsSync(join(root, "cancel-out")), "the cancelled job removed the output folder it created");
  } finally {
    client.close();
    await coordinator.close();
  }
});

test("output leases: compare-and-set create, held by one job, re-taken by the same job, free once the holder ended or the lease lapsed", async () => {
  const nc = await connectNats({ servers: nats.url, name: "lease-test" });
  try {
    const leases = await OutputLeases.open(nc, { bucket: "lease_test", ttlMs: 1000 });
    const live = new Set(["job-a"]);
    const isLive = async (id: string) => live.has(id);
    await leases.acquire("/data/out", "job-a", isLive);
    await leases.acquire("/data/out", "job-a", isLive); // a resumed job re-takes its own lease
    await assert.rejects(leases.acquire("/data/out", "job-b", isLive), (e: unknown) => e instanceof OutputLockedError && e.holder === "job-a" && /job job-a/.test(e.message));
    await leases.acquire("/data/other", "job-b", isLive); // another folder is another lease
    live.delete("job-a");
    await leases.acquire("/data/out", "job-b", isLive); // the holder ended: taken over
    assert.equal((await leases.holder("/data/out"))?.jobId, "job-b");
    // Not renewed (as by a coordinator that died): the lease lapses (bounded wait for the server's expiry).
    live.add("job-b");
    let lapsed = false;
    for (let i = 0; i < 50 && !lapsed; i++) {
      await new Promise((r) => setTimeout(r, 200));
      lapsed = (await leases.holder("/data/out")) === undefined;
    }
    assert.ok(lapsed, "an unrenewed lease lapses");
    // Another coordinator takes it (this one still knows job-b as its own running job, and refuses).
    const other = await OutputLeases.open(nc, { bucket: "lease_test", ttlMs: 1000 });
    await other.acquire("/data/out", "job-c", isLive);
    await assert.rejects(leases.acquire("/data/out", "job-d", isLive), (e: unknown) => e instanceof OutputLockedError && e.holder === "job-b");
    // Kept: renewed past its TTL, then released at the end.
    const held = leases.keep("/data/kept", "job-k", isLive);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await leases.holder("/data/kept"))?.jobId, "job-k", "a kept lease is renewed");
    await held.release();
    assert.equal(await leases.holder("/data/kept"), undefined);
  } finally {
    await nc.close();
  }
});
