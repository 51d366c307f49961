// Data-parallel calibration in the cluster (issue 10 §1): stages x replicas on real workers over
// gRPC, the replicas' records exchanged worker to worker. Every grid writes the bytes and the
// report facts of `atvp prune`, also when a replica's worker dies mid-job.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator } from "../../services/coordinator/src/coordinator.js";
import { startWorker } from "../../services/worker/src/worker.js";
import { exchangePath, readExchangeFile } from "../../services/worker/src/dataplane/exchangeFile.js";
import { tempDir } from "../support/fixtures.js";
import { jobClient, openBlockStarts, startChild, startLocalCluster, waitForJob, type ChildService } from "../support/cluster.js";

const tmp = tempDir("replica-cluster");
let model: { model: string; calib: string };
const reference = new Map<string, { data: Buffer; report: { layers: unknown[]; blocks: Record<string, unknown>[] } }>();
const natsServers: NatsServerHandle[] = [];
let counter = 0;

const METHODS = { atv: "sequential", wanda: "dense", sparsegpt: "sequential" } as const;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 4, hidden: 64, samples: 9, seqLen: 40, imageTokens: 16, seed: 23 });
  model = { model: g.modelPath, calib: g.calibPath };
  for (const [method, propagation] of Object.entries(METHODS)) {
    const out = join(tmp.path, `ref-${method}`);
    await pruneModel({ ...model, method, sparsity: 0.5, alpha: 4, propagation, out, threads: 1 });
    reference.set(method, { data: readFileSync(join(out, "model.onnx.data")), report: JSON.parse(readFileSync(join(out, "report.json"), "utf8")) });
  }
  const out = join(tmp.path, "ref-atv-graph");
  await pruneModel({ ...model, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential", out, threads: 1, stats: "graph" });
  reference.set("atv-graph", { data: readFileSync(join(out, "model.onnx.data")), report: JSON.parse(readFileSync(join(out, "report.json"), "utf8")) });
});
after(async () => {
  for (const n of natsServers) await n.stop();
  tmp.cleanup();
});

async function freshNats(): Promise<NatsServerHandle> {
  const n = await startNatsServer({ dir: join(tmp.path, `nats-${natsServers.length}`) });
  natsServers.push(n);
  return n;
}

function spec(method: keyof typeof METHODS, extra: Record<string, unknown> = {}) {
  return { ...model, out: join(tmp.path, `out-${++counter}`), method, sparsity: 0.5, alpha: 4, propagation: METHODS[method], ...extra };
}

function assertSameAsPrune(method: keyof typeof METHODS | "atv-graph", out: string): void {
  const ref = reference.get(method)!;
  assert.ok(readFileSync(join(out, "model.onnx.data")).equals(ref.data), "weights differ from atvp prune's");
  const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { layers: unknown[]; blocks: Record<string, unknown>[] };
  const facts = (b: Record<string, unknown>) => ({ ...b, seconds: 0, tokensPerSecond: 0 });
  assert.deepEqual(report.layers, ref.report.layers);
  assert.deepEqual(report.blocks.map(facts), ref.report.blocks.map(facts));
}

/** A local cluster on its own nats-server, which close() stops too (after() stops it again, harmlessly). */
async function inProcessCluster(workers: number) {
  const nats = await freshNats();
  const cluster = await startLocalCluster(nats.url, workers, tmp.path);
  return {
    ...cluster,
    async close() {
      await cluster.close();
      await nats.stop();
    },
  };
}

for (const [workers, replicas, stages] of [[2, 2, 1], [3, 3, 1], [4, 2, 2]] as const) {
  for (const method of ["atv", "wanda"] as const) {
    test(`${method}, ${METHODS[method]}: ${stages} stage(s) x ${replicas} replicas on ${workers} workers, bit-identical to atvp prune`, async () => {
      const c = await inProcessCluster(workers);
      try {
        // The work dir is kept to look at the exchange's files below.
        const s = spec(method, { replicas, keepWork: true });
        const { job } = await c.client.submitJob({ spec: s });
        const result = await waitForJob(c.client, job!.id);
        const final = await c.client.getJob({ id: job!.id });
        assert.equal(result.state, JobState.SUCCEEDED, final.reason);
        assert.equal(final.stages, stages);
        assert.equal(final.replicas, replicas);
        assert.deepEqual(final.shards.map((x) => [x.stage, x.replica]), Array.from({ length: stages * replicas }, (_, i) => [Math.floor(i / replicas), i % replicas]));
        // Every replica counts its stage's blocks (replica 0 records a block once all have done it).
        assert.deepEqual(final.shards.map((x) => x.blocksDone), final.shards.map((x) => x.endBlock - x.firstBlock));
        const grid = result.events.flatMap((e) => (e.event.case === "gridPlanned" ? [e.event.value] : []));
        assert.deepEqual(grid.map((g) => [g.stages, g.replicas, g.samples]), [[stages, replicas, 9]]);
        // One block_finished per block: replica 0 of each stage reports for its stage.
        assert.deepEqual(result.events.flatMap((e) => (e.event.case === "blockFinished" ? [e.event.value.block] : [])).sort(), [0, 1, 2, 3]);
        assertSameAsPrune(method, s.out);
        const report = JSON.parse(readFileSync(join(s.out, "report.json"), "utf8")) as { grid: unknown; layers: { block: number }[] };
        assert.deepEqual(report.grid, { stages, replicas });
        // The replicas shared each block's compress step out: each one's file holds the results of
        // its own linears only, contiguous items that together are every linear of the block once.
        const perBlock = report.layers.filter((l) => l.block === 0).length;
        const shares = await Promise.all(Array.from({ length: replicas }, (_, r) => readExchangeFile(exchangePath(join(tmp.path, "jobs", job!.id), 0, "compress-0", r))));
        assert.deepEqual(shares.map((x) => x.first), shares.map((_, r) => shares.slice(0, r).reduce((a, y) => a + y.records.length, 0)));
        assert.ok(shares.every((x) => x.records.length > 0 && x.records.length < perBlock), `items per replica: ${shares.map((x) => x.records.length)}`);
        assert.equal(shares.reduce((a, x) => a + x.records.length, 0), perBlock);
      } finally {
        await c.close();
      }
    });
  }
}

test("atv with --stats graph: 2 replicas, bit-identical to atvp prune --stats graph", async () => {
  const c = await inProcessCluster(2);
  try {
    const s = spec("atv", { replicas: 2, stats: "graph" });
    const { job } = await c.client.submitJob({ spec: s });
    const result = await waitForJob(c.client, job!.id);
    assert.equal(result.state, JobState.SUCCEEDED, (await c.client.getJob({ id: job!.id })).reason);
    assertSameAsPrune("atv-graph", s.out);
  } finally {
    await c.close();
  }
});

test("by default the planner gives a splittable method with sequential propagation one stage of a replica per worker", async () => {
  const c = await inProcessCluster(2);
  try {
    const s = spec("atv");
    const { job } = await c.client.submitJob({ spec: s });
    const result = await waitForJob(c.client, job!.id);
    const final = await c.client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.deepEqual([final.stages, final.replicas], [1, 2]);
    assertSameAsPrune("atv", s.out);
    // Dense propagation and methods that cannot be split keep one replica per stage.
    const dense = spec("wanda");
    const { job: j2 } = await c.client.submitJob({ spec: dense });
    assert.equal((await waitForJob(c.client, j2!.id)).state, JobState.SUCCEEDED);
    const f2 = await c.client.getJob({ id: j2!.id });
    assert.deepEqual([f2.stages, f2.replicas], [2, 1]);
  } finally {
    await c.close();
  }
});

test("replicas for a method that reads no samples (magnitude): INVALID_ARGUMENT naming spec.replicas", async () => {
  const c = await inProcessCluster(1);
  try {
    await assert.rejects(c.client.submitJob({ spec: { ...spec("atv"), method: "magnitude", calib: "", replicas: 2 } }),
      (e: { code: number; details: string }) => e.code === status.INVALID_ARGUMENT && /spec\.replicas: method magnitude cannot be split over replicas \(it reads no calibration samples/.test(e.details));
  } finally {
    await c.close();
  }
});

// SparseGPT: the replicas' Hessians go down a chain and each solves its share of a block's linears.
for (const [method, victimReplica] of [["atv", 1], ["atv", 0], ["sparsegpt", 0]] as const) {
  test(`${method}: the worker of replica ${victimReplica} killed with SIGKILL mid-job: the replica reruns elsewhere from its checkpoints, same bytes`, async () => {
    const nats = await freshNats();
    const children: ChildService[] = [];
    for (let i = 0; i < 3; i++) children.push(await startChild("worker", ["--listen", "127.0.0.1:0", "--threads", "1", "--insecure", "--allow-root", tmp.path]));
    const coordinator = await startCoordinator({ nats: nats.url, workers: children.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], log: () => {} });
    const client = jobClient(coordinator.address);
    try {
      await coordinator.pool.waitForReady(3, 10_000);
      // Two replicas on three workers: the third takes over the lost replica.
      const s = spec(method, { replicas: 2, workers: 2 });
      const { job } = await client.submitJob({ spec: s });
      let killed: ChildService | undefined;
      const result = await waitForJob(client, job!.id, 120_000, async (e) => {
        if (killed || e.event.case !== "blockFinished" || e.event.value.block !== 1) return;
        const shard = (await client.getJob({ id: job!.id })).shards.find((x) => x.replica === victimReplica);
        killed = children.find((c) => c.address === shard?.worker);
        await killed?.kill("SIGKILL");
      });
      const final = await client.getJob({ id: job!.id });
      assert.ok(killed, "the test must kill a worker mid-job");
      assert.equal(result.state, JobState.SUCCEEDED, final.reason);
      assert.ok(result.events.some((e) => e.event.case === "shardReassigned" && e.event.value.fromWorker === killed!.address));
      assert.ok(final.shards.some((x) => x.replica === victimReplica && x.attempts > 1), "the replica was rerun");
      assert.deepEqual(final.shards.map((x) => x.blocksDone), [4, 4], "each replica counts every block once, across attempts");
      assert.deepEqual(openBlockStarts(result.events), []);
      assertSameAsPrune(method, s.out);
    } finally {
      client.close();
      await coordinator.close();
      for (const c of children) await c.kill();
      await nats.stop();
    }
  });
}

test("the coordinator restarted mid-job with one worker left: the job keeps its 2 replicas, both on that worker, same bytes", async () => {
  const nats = await freshNats();
  const [a, b] = [await startWorker({ threads: 1, log: () => {} }), await startWorker({ threads: 1, log: () => {} })];
  const common = { nats: nats.url, workRoot: join(tmp.path, "jobs-resume"), allowedRoots: [tmp.path], log: () => {} };
  let first: Awaited<ReturnType<typeof startCoordinator>> | undefined = await startCoordinator({ ...common, workers: [a.address, b.address] });
  let second: Awaited<ReturnType<typeof startCoordinator>> | undefined;
  try {
    await first.pool.waitForReady(2, 10_000);
    let client = jobClient(first.address);
    const s = spec("atv", { replicas: 2 });
    const { job } = await client.submitJob({ spec: s });
    const watch = client.watchJob({ id: job!.id }, { deadlineMs: 60_000 });
    try {
      for await (const e of watch) if (e.event.case === "blockFinished") break;
    } finally {
      watch.cancel();
    }
    client.close();
    await first.close();
    first = undefined;
    second = await startCoordinator({ ...common, workers: [a.address] });
    client = jobClient(second.address);
    try {
      const result = await waitForJob(client, job!.id);
      const final = await client.getJob({ id: job!.id });
      assert.equal(result.state, JobState.SUCCEEDED, final.reason);
      assert.deepEqual([final.stages, final.replicas], [1, 2]);
      assert.deepEqual(final.shards.map((x) => x.worker), [a.address, a.address]);
      assert.deepEqual(openBlockStarts(result.events), []);
      assertSameAsPrune("atv", s.out);
    } finally {
      client.close();
    }
  } finally {
    await first?.close();
    await second?.close();
    await a.close();
    await b.close();
    await nats.stop();
  }
});
