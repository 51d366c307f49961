// Problem 5 of issue 7: the worker running shard 0 is stopped (SIGSTOP). Its TCP connection
// stays open, so only the missing heartbeats tell: with --stall-timeout the coordinator
// declares it lost, reruns its shard elsewhere from the checkpoints, and the job ends
// SUCCEEDED with the bytes of `atvp prune`. The events say which shard failed, why and where it
// went, and close the stopped worker's block_started. Resumed (SIGCONT), the stopped worker
// writes nothing into the finished job.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator } from "../../services/coordinator/src/coordinator.js";
import { startWorker } from "../../services/worker/src/worker.js";
import { CLI, tempDir } from "../support/fixtures.js";
import { jobClient, openBlockStarts, startChild, waitForJob, type ChildService } from "../support/cluster.js";
import { workerClient, withTimeout } from "../worker/harness.js";

const tmp = tempDir("stall");
let model: { model: string; calib: string };
let reference: Buffer;
let nats: NatsServerHandle;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 6, hidden: 64, samples: 24, seqLen: 64, imageTokens: 24, seed: 11 });
  model = { model: g.modelPath, calib: g.calibPath };
  const out = join(tmp.path, "ref");
  await pruneModel({ ...model, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential", out, threads: 1 });
  reference = readFileSync(join(out, "model.onnx.data"));
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
});

after(async () => {
  await nats?.stop();
  tmp.cleanup();
});

test("the worker of shard 0 stopped (SIGSTOP) past --stall-timeout: declared stalled, its shard rerun, SUCCEEDED and bit-identical", async () => {
  const workers: ChildService[] = [];
  const workRoot = join(tmp.path, "jobs");
  for (let i = 0; i < 2; i++) workers.push(await startChild("worker", ["--listen", "127.0.0.1:0", "--threads", "1", "--insecure", "--allow-root", tmp.path]));
  const coordinator = await startChild("coordinator", [
    "--nats", nats.url, "--work-root", workRoot, "--allow-root", tmp.path, "--stall-timeout", "3",
    ...workers.flatMap((w) => ["--worker", w.address]),
  ]);
  const client = jobClient(coordinator.address);
  let victim: ChildService | undefined;
  try {
    const out = join(tmp.path, "out");
    const { job } = await client.submitJob({ spec: { ...model, out, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential" } });
    const id = job!.id;
    let shard0 = "";
    const result = await waitForJob(client, id, 180_000, (e) => {
      if (e.event.case === "shardAssigned" && e.event.value.shard === 0 && e.event.value.attempt === 1) shard0 = e.event.value.worker;
      // At once (no round trip first): shard 0 must still be on its first block when it stops.
      if (!victim && e.event.case === "blockStarted" && e.event.value.block === 0) {
        victim = workers.find((w) => w.address === shard0);
        victim?.child.kill("SIGSTOP");
      }
    });
    assert.ok(victim, "the worker of shard 0 was stopped");
    const final = await client.getJob({ id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(reference), "bit-identical to atvp prune");
    assert.ok(final.shards.find((s) => s.index === 0)!.attempts > 1, "shard 0 was rerun");

    const failed = result.events.flatMap((e) => (e.event.case === "shardFailed" ? [e.event.value] : []));
    const stalled = failed.find((f) => f.shard === 0 && f.worker === victim!.address);
    assert.ok(stalled, `a shard_failed for shard 0 on ${victim.address}: ${JSON.stringify(failed)}`);
    assert.equal(stalled.cause, "stalled");
    assert.match(stalled.reason, /no heartbeat or progress for [\d.]+ s \(stall timeout 3 s\)/);
    const moved = result.events.flatMap((e) => (e.event.case === "shardReassigned" ? [e.event.value] : []));
    assert.ok(moved.some((m) => m.shard === 0 && m.fromWorker === victim!.address && m.toWorker !== victim!.address && m.cause === "stalled"), JSON.stringify(moved));
    assert.deepEqual(openBlockStarts(result.events), [], "every block_started is closed");
    assert.ok(!existsSync(join(workRoot, id)), "a SUCCEEDED job's work folder is removed");

    // `atvp watch` shows the same story (JSON lines when stdout is not a terminal).
    const watch = spawnSync(process.execPath, [CLI, "watch", id, "--coordinator", coordinator.address], { encoding: "utf8", timeout: 60_000 });
    assert.equal(watch.status, 0, watch.stderr);
    const lines = watch.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(lines.some((l) => l["type"] === "shard_failed" && l["cause"] === "stalled" && l["worker"] === victim!.address && l["shard"] === 0));
    assert.ok(lines.some((l) => l["type"] === "shard_reassigned" && l["fromWorker"] === victim!.address));

    // Resumed, the stopped worker ends its stale run without touching the job's files.
    victim.child.kill("SIGCONT");
    const c = workerClient(victim.address);
    try {
      await withTimeout((async () => {
        while ((await c.getInfo({}, { deadlineMs: 5000 })).runningJobs.length > 0) await new Promise((r) => setTimeout(r, 100));
      })(), 30_000, "the resumed worker's stale run to stop");
    } finally {
      c.close();
    }
    assert.ok(!existsSync(join(workRoot, id)), "the resumed worker did not recreate the work folder");
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(reference));
    assert.equal((await client.getJob({ id })).state, JobState.SUCCEEDED);
  } finally {
    victim?.child.kill("SIGCONT");
    client.close();
    await coordinator.kill("SIGTERM");
    for (const w of workers) await w.kill();
  }
});

test("--stall-timeout must be a positive number of seconds, named in the error", () => {
  const r = spawnSync(process.execPath, [join(CLI, "../../../coordinator/src/main.js"), "--nats", "nats://127.0.0.1:1", "--stall-timeout", "0"], { encoding: "utf8", timeout: 30_000 });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--stall-timeout must be a number of seconds > 0, got "0"/);
});

test("a coordinator that resumes a job closes the block_started its predecessor left open", async () => {
  const [a, b] = [await startWorker({ threads: 1, log: () => {} }), await startWorker({ threads: 1, log: () => {} })];
  const workRoot = join(tmp.path, "jobs-resume");
  const common = { nats: nats.url, workRoot, allowedRoots: [tmp.path], log: () => {} };
  let first: Awaited<ReturnType<typeof startCoordinator>> | undefined = await startCoordinator({ ...common, workers: [a.address, b.address] });
  let second: Awaited<ReturnType<typeof startCoordinator>> | undefined;
  try {
    await first.pool.waitForReady(2, 10_000);
    let client = jobClient(first.address);
    const out = join(tmp.path, "out-resume");
    // One replica per stage: both workers report blocks (a stage each).
    const { job } = await client.submitJob({ spec: { ...model, out, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential", replicas: 1 } });
    const id = job!.id;
    // Until both workers have a block in progress (B's is left open when the first coordinator goes).
    const startedBy = new Set<string>();
    const watch = client.watchJob({ id }, { deadlineMs: 60_000 });
    try {
      for await (const e of watch) {
        if (e.event.case === "blockStarted") startedBy.add(e.event.value.worker);
        if (startedBy.has(a.id) && startedBy.has(b.id)) break;
      }
    } finally {
      // The server ends its side of the watch only when cancelled (closing the channel is not enough).
      watch.cancel();
    }
    assert.ok(startedBy.has(b.id), "worker B started a block");
    client.close();
    await first.close();
    first = undefined;
    // The next coordinator knows worker A only: B's block is rerun on A, so only the new coordinator can close B's start.
    second = await startCoordinator({ ...common, workers: [a.address] });
    client = jobClient(second.address);
    try {
      const result = await waitForJob(client, id);
      assert.equal(result.state, JobState.SUCCEEDED, (await client.getJob({ id })).reason);
      assert.ok(readFileSync(join(out, "model.onnx.data")).equals(reference));
      assert.ok(result.events.some((e) => e.event.case === "blockAborted" && e.event.value.worker === b.id && /coordinator .* stopped/.test(e.event.value.reason)));
      assert.deepEqual(openBlockStarts(result.events), []);
    } finally {
      client.close();
    }
  } finally {
    await first?.close();
    await second?.close();
    await a.close();
    await b.close();
  }
});
