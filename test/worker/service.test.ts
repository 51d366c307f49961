// WorkerService beyond the happy path: GetInfo, CancelShard, UpdateUpstream on an unknown
// shard, a rerun superseding a running attempt, errors mapped to statuses with messages that
// name the job, block or file, and the /metrics endpoint.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, truncateSync, statSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { clone } from "@bufbuild/protobuf";
import { JobPlanSchema } from "../../services/gen/atvprune/v1/plan_pb.js";
import { MiniCoordinator, withTimeout, workerClient } from "./harness.js";

const tmp = tempDir("worker-service");
let model: { model: string; calib: string };
let a: WorkerHandle;
let b: WorkerHandle;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 4, hidden: 64, samples: 4, seqLen: 32, imageTokens: 16, seed: 3 });
  model = { model: g.modelPath, calib: g.calibPath };
  a = await startWorker({ host: "127.0.0.1", port: 0, id: "svc-a", threads: 1, memoryBytes: 123456789, metricsPort: 0, pullWaitMs: 100, log: () => {} });
  b = await startWorker({ host: "127.0.0.1", port: 0, id: "svc-b", threads: 2, pullWaitMs: 100, log: () => {} });
});

after(async () => {
  await Promise.all([a.close(), b.close()]);
  tmp.cleanup();
});

function spec(name: string, extra: Partial<PruneSpec> = {}): PruneSpec {
  return { ...model, out: join(tmp.path, `out-${name}`), method: "atv", sparsity: 0.5, ...extra } as PruneSpec;
}

test("GetInfo: id, address, device, memory, threads and the jobs running now", async () => {
  const c = await MiniCoordinator.start("info", spec("info"), join(tmp.path, "work-info"));
  try {
    const info = await c.client(a.address).getInfo({});
    assert.deepEqual({ ...info, $typeName: undefined }, { $typeName: undefined, id: "svc-a", address: a.address, device: "cpu", memoryBytes: 123456789n, threads: 1, runningJobs: [] });
    // A downstream shard waiting for an upstream that has no such job is running.
    const waiting = c.runShard(a.address, 1, 2, 4, b.address);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual((await c.client(a.address).getInfo({})).runningJobs, ["info"]);
    assert.deepEqual((await c.client(a.address).cancelShard({ jobId: "info", shard: 1 })).cancelled, true);
    await assert.rejects(withTimeout(waiting.done, 10_000, "cancel"), (e: { code: number; details: string }) => e.code === status.CANCELLED && /job info shard 1/.test(e.details));
    assert.deepEqual((await c.client(a.address).getInfo({})).runningJobs, []);
    assert.deepEqual((await c.client(a.address).cancelShard({ jobId: "info", shard: 1 })).cancelled, false);
    await assert.rejects(c.client(a.address).updateUpstream({ jobId: "info", shard: 7, upstream: "x:1" }), (e: { code: number }) => e.code === status.NOT_FOUND);
  } finally {
    await c.close();
  }
});

test("a second attempt of a running shard supersedes the first (ABORTED) and completes identically", async () => {
  const s = spec("supersede");
  const refOut = join(tmp.path, "ref-supersede");
  await pruneModel({ ...s, out: refOut, threads: 1 });
  const c = await MiniCoordinator.start("supersede", s, join(tmp.path, "work-supersede"));
  try {
    const first = c.runShard(a.address, 1, 2, 4, b.address);
    await new Promise((r) => setTimeout(r, 150));
    const second = c.runShard(a.address, 1, 2, 4, b.address, { attempt: 2 });
    await assert.rejects(withTimeout(first.done, 10_000, "first attempt"), (e: { code: number }) => e.code === status.ABORTED);
    const up = c.runShard(b.address, 0, 0, 2, "");
    await withTimeout(Promise.all([up.done, second.done]), 30_000, "supersede");
    assert.ok((await c.finish()).equals(readFileSync(join(refOut, "model.onnx.data"))));
  } finally {
    await c.close();
  }
});

test("errors end the stream with the mapped status and name the job, block or file", async () => {
  const client = workerClient(a.address);
  try {
    // A bad plan: INVALID_ARGUMENT naming the field.
    const bad = await MiniCoordinator.start("bad", spec("bad"), join(tmp.path, "work-bad"));
    const badPlan = clone(JobPlanSchema, bad.plan);
    badPlan.linears[0]!.target = 1.5;
    const call = client.runShard({ jobId: "bad", plan: badPlan, shard: 0, firstBlock: 0, endBlock: 4, workDir: bad.workDir, attempt: 1 });
    await assert.rejects((async () => { for await (const _ of call) { /* drain */ } })(),
      (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /job bad shard 0/.test(e.details) && /plan\.linears: target 1\.5/.test(e.details));
    await bad.close();

    // Blocks outside the model.
    const c = await MiniCoordinator.start("ckpt", spec("ckpt"), join(tmp.path, "work-ckpt"));
    await assert.rejects(withTimeout(c.runShard(a.address, 0, 3, 9, "").done, 10_000, "range"), (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /blocks \[3, 9\)/.test(e.details));

    // A done block whose output states went missing: FAILED_PRECONDITION naming the file.
    await withTimeout(c.runShard(a.address, 0, 0, 1, "").done, 20_000, "block 0");
    rmSync(join(c.workDir, "states", "input-1.bin"));
    await assert.rejects(withTimeout(c.runShard(a.address, 0, 0, 4, "").done, 10_000, "missing"),
      (e: { code: number; details: string }) => e.code === status.FAILED_PRECONDITION && /input-1\.bin/.test(e.details) && /block 0 is done/.test(e.details));

    // A truncated states file: the block that reads it fails naming the file.
    rmSync(join(c.workDir, "blocks", "0.json"));
    const input0 = join(c.workDir, "states", "input-0.bin");
    truncateSync(input0, statSync(input0).size - 5);
    await assert.rejects(withTimeout(c.runShard(a.address, 0, 0, 4, "").done, 10_000, "truncated"),
      (e: { code: number; details: string }) => e.code === status.FAILED_PRECONDITION && /input-0\.bin/.test(e.details) && /truncated/.test(e.details));
    await c.close();
  } finally {
    client.close();
  }
});

test("a block's commit that fails behind the next block's compute ends the run naming that block; later blocks stay undone", async () => {
  const c = await MiniCoordinator.start("commit-fails", spec("commit-fails"), join(tmp.path, "work-commit-fails"));
  try {
    // Block 1's output states cannot be renamed into place: a folder holds their name.
    mkdirSync(join(c.workDir, "states", "input-2.bin", "in-the-way"), { recursive: true });
    await assert.rejects(withTimeout(c.runShard(a.address, 0, 0, 4, "").done, 20_000, "commit fails"),
      (e: { code: number; details: string }) => e.code === status.INTERNAL && /job commit-fails, block 1 /.test(e.details));
    assert.ok(existsSync(join(c.workDir, "blocks", "0.json")), "block 0 committed before the failure");
    for (const b of [1, 2, 3]) assert.ok(!existsSync(join(c.workDir, "blocks", `${b}.json`)), `block ${b} is marked done after block 1's commit failed`);
    assert.deepEqual(readdirSync(join(c.workDir, "states")).filter((f) => f.includes(".tmp")), [], "a states file was left half written");
  } finally {
    await c.close();
  }
});

test("/metrics serves the worker's counters; /healthz and /readyz answer", async () => {
  const get = async (path: string) => {
    const r = await fetch(`http://127.0.0.1:${a.metricsPort}${path}`);
    return { status: r.status, text: await r.text() };
  };
  const m = await get("/metrics");
  assert.equal(m.status, 200);
  for (const name of ["atvp_blocks_pruned_total", "atvp_params_pruned_total", "atvp_calibration_token_passes_total", "atvp_activation_bytes_streamed_total", "atvp_block_duration_seconds_bucket", "process_cpu_user_seconds_total"]) {
    assert.match(m.text, new RegExp(`^${name}`, "m"), name);
  }
  // Earlier tests pruned blocks on this worker.
  assert.match(m.text, /^atvp_blocks_pruned_total\{worker="svc-a"\} [1-9]/m);
  assert.equal((await get("/healthz")).status, 200);
  assert.equal((await get("/readyz")).status, 200);
});

test("FinalizeOutput: a worker completes the output from the plan (again is a no-op); a plan for another layout is refused and the partial kept", async () => {
  const s = spec("finalize");
  const refOut = join(tmp.path, "ref-finalize");
  await pruneModel({ ...s, out: refOut, threads: 1 });
  const c = await MiniCoordinator.start("finalize", s, join(tmp.path, "work-finalize"));
  try {
    await withTimeout(c.runAll([a.address, b.address], [[0, 2], [2, 4]]), 60_000, "shards");
    const wrong = clone(JobPlanSchema, c.plan);
    wrong.dataBytes += 4096n;
    await assert.rejects(c.client(a.address).finalizeOutput({ jobId: "finalize", plan: wrong }),
      (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /job finalize output/.test(e.details) && /plan\.dataBytes/.test(e.details));
    assert.ok(existsSync(join(s.out, "model.onnx.data.partial")), "the workers' weights are kept");
    await c.client(b.address).finalizeOutput({ jobId: "finalize", plan: c.plan });
    for (const f of ["model.onnx", "model.onnx.data"]) assert.ok(readFileSync(join(s.out, f)).equals(readFileSync(join(refOut, f))), f);
    await c.client(a.address).finalizeOutput({ jobId: "finalize", plan: c.plan });
    assert.ok(readFileSync(join(s.out, "model.onnx.data")).equals(readFileSync(join(refOut, "model.onnx.data"))));
    // A finalize that stopped after renaming the data, before model.onnx: the next one finishes it.
    rmSync(join(s.out, "model.onnx"));
    await c.client(a.address).finalizeOutput({ jobId: "finalize", plan: c.plan });
    for (const f of ["model.onnx", "model.onnx.data"]) assert.ok(readFileSync(join(s.out, f)).equals(readFileSync(join(refOut, f))), `${f} after the rerun`);
    assert.ok(!existsSync(join(s.out, "model.onnx.data.partial")));
  } finally {
    await c.close();
  }
});
