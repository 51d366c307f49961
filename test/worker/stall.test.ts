// A worker's side of stall detection: heartbeats on the RunShard stream, and a worker frozen
// (SIGSTOP) past the stall fence that, once resumed (SIGCONT), stops its run before it writes
// anything more, even though its stream was never cancelled.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { RunLiveness } from "../../services/worker/src/control/runLiveness.js";
import { tempDir } from "../support/fixtures.js";
import { startChild, type ChildService } from "../support/cluster.js";
import { MiniCoordinator, withTimeout } from "./harness.js";

const tmp = tempDir("worker-stall");
let model: { model: string; calib: string };
const children: ChildService[] = [];

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 8, hidden: 64, samples: 8, seqLen: 48, imageTokens: 24, seed: 9 });
  model = { model: g.modelPath, calib: g.calibPath };
});

after(() => {
  for (const c of children) {
    c.child.kill("SIGCONT");
    c.child.kill("SIGKILL");
  }
  tmp.cleanup();
});

function busyWait(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) { /* the event loop is frozen meanwhile */ }
}

test("RunLiveness: beats while the event loop runs; a loop frozen past the fence stops the run", async () => {
  let beats = 0;
  const frozen: Error[] = [];
  const l = new RunLiveness({ heartbeatMs: 10, stallTimeoutMs: 200, subject: "job j shard 0", beat: () => beats++, frozen: (e) => frozen.push(e) });
  l.start();
  try {
    await withTimeout((async () => { while (beats < 3) await new Promise((r) => setTimeout(r, 5)); })(), 10_000, "three heartbeats");
    l.guard();
    assert.equal(frozen.length, 0);
    busyWait(300);
    assert.throws(() => l.guard(), (e: { code: number; message: string }) => e.code === status.ABORTED && /job j shard 0: this worker was frozen for/.test(e.message));
    assert.equal(frozen.length, 1);
    const before = beats;
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(beats, before, "no heartbeat after the fence");
  } finally {
    l.stop();
  }
  // No stall timeout: no fence, however long the freeze.
  const free = new RunLiveness({ heartbeatMs: 10, stallTimeoutMs: 0, subject: "s", beat: () => {}, frozen: () => assert.fail("fenced without a stall timeout") });
  free.start();
  busyWait(100);
  free.guard();
  free.stop();
});

/** Waits (bounded) until the process is in state T (stopped). */
async function stopped(pid: number): Promise<void> {
  await withTimeout((async () => {
    while (readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]![0] !== "T") await new Promise((r) => setTimeout(r, 10));
  })(), 10_000, "SIGSTOP taking effect");
}

function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true }).map(String).sort();
}

test("a worker resumed after a freeze past the stall fence stops its shard with ABORTED and writes nothing more", async () => {
  const w = await startChild("worker", ["--listen", "127.0.0.1:0", "--id", "frozen", "--threads", "1", "--insecure", "--allow-root", tmp.path]);
  children.push(w);
  const workDir = join(tmp.path, "work-frozen");
  const mini = await MiniCoordinator.start("job-frozen", { ...model, method: "atv", sparsity: 0.5, out: join(tmp.path, "out-frozen") }, workDir);
  try {
    let started = -1;
    let heartbeats = 0;
    let stop!: () => void;
    const stopNow = new Promise<void>((resolve) => (stop = resolve));
    const call = mini.runShard(w.address, 0, 0, 8, "", {
      heartbeatMs: 50, stallTimeoutMs: 1000,
      onEvent: (p) => {
        if (p.progress.case === "blockStarted") started = p.progress.value.block;
        if (p.progress.case === "heartbeat") heartbeats++;
        if (started >= 1 && started < 6 && heartbeats > 0) stop();
      },
    });
    await withTimeout(Promise.race([stopNow, call.done.then(() => assert.fail("the shard ended before the worker could be stopped"))]), 60_000, "a block in progress");
    w.child.kill("SIGSTOP");
    await stopped(w.child.pid!);
    const atStop = files(workDir);
    // Longer than the stall timeout: the coordinator would have given the shard away by now.
    await new Promise((r) => setTimeout(r, 1800));
    w.child.kill("SIGCONT");
    await assert.rejects(withTimeout(call.done, 30_000, "the frozen run's end"),
      (e: { code: number; details: string }) => e.code === status.ABORTED && /frozen for/.test(e.details));
    assert.ok(heartbeats > 0);
    const blocksAtStop = atStop.filter((f) => /^blocks\/\d+\.json$/.test(f));
    assert.deepEqual(files(workDir).filter((f) => /^blocks\/\d+\.json$/.test(f)), blocksAtStop, "no block finished after the freeze");
    assert.deepEqual(files(workDir).filter((f) => f.includes(".tmp-")), [], "no temp file left behind");
    assert.match(w.stderr(), /frozen for/);
  } finally {
    await mini.close();
    w.child.kill("SIGCONT");
    w.child.kill("SIGKILL");
  }
});
