// Failures the worker must survive with an output byte-identical to `atvp prune`: a worker in a
// child process killed (SIGKILL) in the middle of its shard and the shard rerun on another
// worker, which resumes after the blocks already done; and a downstream shard started before
// its upstream, which waits and pulls.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { REPO, tempDir } from "../support/fixtures.js";
import { MiniCoordinator, withTimeout } from "./harness.js";

const WORKER_MAIN = join(REPO, "dist/services/worker/src/main.js");
const tmp = tempDir("worker-resume");
let model: { model: string; calib: string };
let workers: WorkerHandle[] = [];
const children: ChildProcess[] = [];
const quiet = () => {};

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 4, hidden: 64, samples: 8, seqLen: 48, imageTokens: 24, seed: 5 });
  model = { model: g.modelPath, calib: g.calibPath };
  workers = await Promise.all([0, 1].map((i) => startWorker({ host: "127.0.0.1", port: 0, id: `r${i}`, threads: 1, log: quiet })));
});

after(async () => {
  for (const c of children) c.kill("SIGKILL");
  await Promise.all(workers.map((w) => w.close()));
  tmp.cleanup();
});

async function reference(name: string, spec: Omit<PruneSpec, "model" | "out">): Promise<Buffer> {
  const out = join(tmp.path, `ref-${name}`);
  await pruneModel({ ...model, out, threads: 1, ...spec } as PruneSpec);
  return readFileSync(join(out, "model.onnx.data"));
}

/** Starts main.js in a child process and waits for its ready line. */
async function spawnWorker(id: string): Promise<{ child: ChildProcess; address: string; pid: number }> {
  const child = spawn(process.execPath, [WORKER_MAIN, "--listen", "127.0.0.1:0", "--id", id, "--threads", "1", "--insecure", "--allow-root", tmp.path], { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let stderr = "";
  child.stderr!.on("data", (d) => (stderr += String(d)));
  const line = await withTimeout(new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", resolve);
    child.once("exit", (code) => reject(new Error(`worker exited ${code}: ${stderr}`)));
  }), 15_000, "child worker start");
  const ready = JSON.parse(line) as { ready: boolean; address: string; pid: number };
  assert.equal(ready.ready, true);
  assert.equal(ready.pid, child.pid);
  return { child, address: ready.address, pid: ready.pid };
}

for (const propagation of ["sequential", "dense"] as const) {
  test(`a worker killed mid-shard (SIGKILL) is replaced; done blocks are not recomputed (${propagation})`, async () => {
    const spec = { method: "atv", sparsity: 0.5, propagation } as const;
    const expected = await reference(`kill-${propagation}`, spec);
    const out = join(tmp.path, `out-kill-${propagation}`);
    const c = await MiniCoordinator.start(`kill-${propagation}`, { ...model, out, ...spec } as PruneSpec, join(tmp.path, `work-kill-${propagation}`));
    const wd = c.workDir;
    try {
      const victim = await spawnWorker(`victim-${propagation}`);
      const [replacement, downstream] = workers as [WorkerHandle, WorkerHandle];
      // Shard 0 = blocks 0-2 on the child, shard 1 = block 3 pulling from it.
      let doneAtKill: Map<number, number> | undefined;
      const exited = new Promise((resolve) => victim.child.once("exit", resolve));
      const first = c.runShard(victim.address, 0, 0, 3, "", {
        onEvent: (p) => {
          // Killed as it starts block 1: block 0 is done, block 1 is in flight.
          if (p.progress.case === "blockStarted" && p.progress.value.block === 1 && !doneAtKill) {
            victim.child.kill("SIGKILL");
            doneAtKill = new Map([0, 1, 2].filter((b) => existsSync(join(wd, "blocks", `${b}.json`))).map((b) => [b, statSync(join(wd, "blocks", `${b}.json`)).mtimeMs]));
          }
        },
      });
      const second = c.runShard(downstream.address, 1, 3, 4, victim.address);
      await assert.rejects(withTimeout(first.done, 20_000, "victim shard"), (e: { code?: number }) => e.code !== undefined);
      await exited;
      assert.ok(doneAtKill, "the victim never started block 1");
      assert.ok(doneAtKill.has(0), "block 0 was done before the kill");
      assert.ok(!doneAtKill.has(2), "the kill happened before the shard's last block");

      // The rerun on another worker; the downstream is told where its upstream is now.
      const rerun = c.runShard(replacement.address, 0, 0, 3, "", { attempt: 2 });
      await c.client(downstream.address).updateUpstream({ jobId: c.jobId, shard: 1, upstream: replacement.address });
      await withTimeout(Promise.all([rerun.done, second.done]), 30_000, "rerun");

      const started = rerun.events.filter((e) => e.progress.case === "blockStarted").map((e) => (e.progress.value as { block: number }).block);
      const finished = rerun.events.filter((e) => e.progress.case === "blockFinished").map((e) => (e.progress.value as { block: number }).block);
      assert.deepEqual(finished, [0, 1, 2], "the rerun reports every block of the shard");
      for (const [b, mtime] of doneAtKill) {
        assert.ok(!started.includes(b), `block ${b} was done before the kill but ran again`);
        assert.equal(statSync(join(wd, "blocks", `${b}.json`)).mtimeMs, mtime, `blocks/${b}.json was rewritten`);
      }
      assert.ok(started.includes(2));
      const data = await c.finish();
      assert.ok(data.equals(expected), "output differs from atvp prune after the kill and rerun");
    } finally {
      await c.close();
    }
  });
}

test("a downstream shard started before its upstream waits, pulls, and the result is identical", async () => {
  const spec = { method: "atv", sparsity: 0.5 } as const;
  const expected = await reference("early", spec);
  const c = await MiniCoordinator.start("early", { ...model, out: join(tmp.path, "out-early"), ...spec } as PruneSpec, join(tmp.path, "work-early"));
  try {
    const [up, down] = workers as [WorkerHandle, WorkerHandle];
    const downstream = c.runShard(down.address, 1, 2, 4, up.address);
    await new Promise((r) => setTimeout(r, 400));
    // Waiting for its input: block 2 started, nothing finished.
    assert.ok(!downstream.events.some((e) => e.progress.case === "blockFinished"));
    const before = await receivedBytes(down);
    const upstream = c.runShard(up.address, 0, 0, 2, "");
    await withTimeout(Promise.all([upstream.done, downstream.done]), 30_000, "early downstream");
    assert.ok((await receivedBytes(down)) > before, "the downstream pulled its input over the data plane");
    assert.ok((await c.finish()).equals(expected));
  } finally {
    await c.close();
  }
});

async function receivedBytes(w: WorkerHandle): Promise<number> {
  const m = await w.metrics.activationBytes.get();
  return m.values.filter((v) => v.labels.direction === "received").reduce((a, v) => a + v.value, 0);
}
