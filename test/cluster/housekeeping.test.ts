// Work folders (checkpoints, states/*.bin) are removed when a job SUCCEEDS or is CANCELLED, and
// kept when it FAILS (a resume needs them); --keep-work (per job, or for the coordinator)
// keeps them always.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator } from "../../services/coordinator/src/coordinator.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { jobClient, openBlockStarts, waitForJob } from "../support/cluster.js";
import { workerClient } from "../worker/harness.js";

const tmp = tempDir("housekeeping");
let model: { model: string; calib: string };
let nats: NatsServerHandle;
const workRoot = () => join(tmp.path, "jobs");

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 4, hidden: 64, samples: 8, seqLen: 48, imageTokens: 20, seed: 3 });
  model = { model: g.modelPath, calib: g.calibPath };
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
});
after(async () => {
  await nats?.stop();
  tmp.cleanup();
});

let counter = 0;
const spec = (extra: Record<string, unknown> = {}) => ({ ...model, out: join(tmp.path, `out-${++counter}`), method: "atv", sparsity: 0.5, ...extra });

async function cluster(workers: number, extra: Partial<Parameters<typeof startCoordinator>[0]> = {}) {
  const ws: WorkerHandle[] = [];
  for (let i = 0; i < workers; i++) ws.push(await startWorker({ threads: 1, log: () => {} }));
  const coordinator = await startCoordinator({ nats: nats.url, workers: ws.map((w) => w.address), workRoot: workRoot(), allowedRoots: [tmp.path], log: () => {}, ...extra });
  await coordinator.pool.waitForReady(workers, 10_000);
  const client = jobClient(coordinator.address);
  return {
    ws, client,
    async close() {
      client.close();
      await coordinator.close();
      for (const w of ws) await w.close();
    },
  };
}

function checkpoints(id: string): string[] {
  return readdirSync(join(workRoot(), id), { recursive: true }).map(String).filter((f) => /^(blocks\/\d+\.json|states\/input-\d+(\.r\d+of\d+)?\.bin|exchange\/\d+\/[\w-]+\.r\d+\.bin)$/.test(f));
}

test("SUCCEEDED removes the work folder; --keep-work on the job keeps it", async () => {
  const c = await cluster(2);
  try {
    const plain = (await c.client.submitJob({ spec: spec() })).job!.id;
    const kept = (await c.client.submitJob({ spec: spec({ keepWork: true }) })).job!.id;
    for (const id of [plain, kept]) assert.equal((await waitForJob(c.client, id)).state, JobState.SUCCEEDED);
    assert.ok(!existsSync(join(workRoot(), plain)), "removed after SUCCEEDED");
    // Two workers: one stage of two replicas, each keeping its share of the states and its records.
    const kept4 = ["blocks/3.json", "states/input-4.r0of2.bin", "states/input-4.r1of2.bin", "exchange/3/pool.r0.bin", "exchange/3/stats-0.r1.bin"];
    for (const f of kept4) assert.ok(checkpoints(kept).includes(f), `${f} in ${String(checkpoints(kept))}`);
  } finally {
    await c.close();
  }
});

test("the coordinator's keepWork keeps every job's work folder", async () => {
  const c = await cluster(1, { keepWork: true });
  try {
    const id = (await c.client.submitJob({ spec: spec() })).job!.id;
    assert.equal((await waitForJob(c.client, id)).state, JobState.SUCCEEDED);
    assert.ok(checkpoints(id).includes("blocks/3.json"));
  } finally {
    await c.close();
  }
});

test("CANCELLED removes the work folder once the workers stopped", async () => {
  const c = await cluster(2);
  try {
    const id = (await c.client.submitJob({ spec: spec() })).job!.id;
    let cancelled = false;
    const result = await waitForJob(c.client, id, 60_000, async (e) => {
      if (!cancelled && e.event.case === "blockFinished") {
        cancelled = true;
        await c.client.cancelJob({ id, reason: "test" });
      }
    });
    assert.equal(result.state, JobState.CANCELLED);
    assert.deepEqual(openBlockStarts(result.events), []);
    assert.ok(!existsSync(join(workRoot(), id)), "removed after CANCELLED");
    // The workers' runs had stopped before it went (CancelShard answers then): none can recreate it.
    for (const w of c.ws) {
      const wc = workerClient(w.address);
      try {
        assert.ok(!(await wc.getInfo({})).runningJobs.includes(id), `${w.address} still runs ${id}`);
      } finally {
        wc.close();
      }
    }
  } finally {
    await c.close();
  }
});

test("FAILED keeps the work folder with its checkpoints, for resume; the failed shard's events say why", async () => {
  const c = await cluster(1, { reassignTimeoutMs: 1000 });
  try {
    const id = (await c.client.submitJob({ spec: spec() })).job!.id;
    let closed = false;
    const result = await waitForJob(c.client, id, 60_000, async (e) => {
      if (!closed && e.event.case === "blockFinished") {
        closed = true;
        await c.ws[0]!.close(); // the only worker goes away for good
      }
    });
    assert.equal(result.state, JobState.FAILED);
    assert.ok(checkpoints(id).includes("blocks/0.json"), String(checkpoints(id)));
    assert.ok(result.events.some((e) => e.event.case === "shardFailed" && e.event.value.worker === c.ws[0]!.address));
    assert.deepEqual(openBlockStarts(result.events), []);
  } finally {
    await c.close();
  }
});
