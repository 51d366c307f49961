// The soak test of issue 7: 8 jobs in parallel on a local cluster (nats-server, 3 workers and a
// coordinator, each its own process on a fixed loopback port) while a seeded RNG injects a
// bounded number of faults: worker SIGKILL (then restarted on its port), worker SIGSTOP for
// longer than the stall timeout (then SIGCONT), coordinator restart, NATS restart. Every job
// must end SUCCEEDED with the bytes of `atvp prune`, and afterwards no process and no work file
// may be left. The faults injected of each kind are printed as one JSON line ("soak": ...).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { Rng } from "../../services/core/src/gen/rng.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { freePort, isAlive } from "../../services/cli/src/localProcesses.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { REPO, tempDir } from "../support/fixtures.js";
import { jobClient, openBlockStarts, startChild, waitForJob, type ChildService } from "../support/cluster.js";

const SEED = Number(process.env["ATVP_SOAK_SEED"] ?? 7);
const JOBS = 8;
const WORKERS = 3;
/** seconds; a stopped worker stays stopped STOP_S > STALL_S */
const STALL_S = 4;
const STOP_S = 6;
/** the most faults injected in all, and how long injecting may go on */
const MAX_FAULTS = 8;
const FAULT_WINDOW_MS = 90_000;
/** how long the jobs may take in all, faults included */
const JOBS_DEADLINE_MS = 300_000;

type Kind = "worker_sigkill" | "worker_sigstop" | "coordinator_restart" | "nats_restart";
const SPECS = [
  { method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential" },
  { method: "wanda", sparsity: 0.5, propagation: "dense" },
] as const;

const tmp = tempDir("soak");
let model: { model: string; calib: string };
const reference: Buffer[] = [];
const pids = new Set<number>();

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 8, hidden: 256, samples: 24, seqLen: 96, imageTokens: 32, seed: 21 });
  model = { model: g.modelPath, calib: g.calibPath };
  for (const [i, s] of SPECS.entries()) {
    const out = join(tmp.path, `ref-${i}`);
    await pruneModel({ ...model, ...s, out, threads: 1 });
    reference.push(readFileSync(join(out, "model.onnx.data")));
  }
});

after(() => tmp.cleanup());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One service on a fixed port, restartable; start retries while its port or NATS is not back yet. */
class Service {
  current: ChildService | undefined;
  stopped = false;
  constructor(readonly which: "worker" | "coordinator", readonly args: string[]) {}

  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        this.current = await startChild(this.which, this.args);
        pids.add(this.current.pid);
        this.stopped = false;
        return;
      } catch (err) {
        if (attempt >= 20) throw err;
        await sleep(500);
      }
    }
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    this.current?.child.kill("SIGCONT");
    await this.current?.kill(signal);
  }
}

test(`soak: ${JOBS} jobs in parallel under random faults (seed ${SEED}) all SUCCEED bit-identical, nothing left behind`, { timeout: 600_000 }, async () => {
  const rng = new Rng(SEED);
  const started = performance.now();
  const workRoot = join(tmp.path, "jobs");
  mkdirSync(workRoot, { recursive: true });
  const nats: NatsServerHandle = await startNatsServer({ dir: join(tmp.path, "nats") });
  const natsPids = new Set<number>([nats.pid]);
  const workers: Service[] = [];
  for (let i = 0; i < WORKERS; i++) {
    // Plaintext (the security tests cover TLS and tokens); the worker's own path policy is on.
    const w = new Service("worker", [
      "--listen", `127.0.0.1:${await freePort()}`, "--threads", "1", "--id", `soak-w${i}`,
      "--insecure", "--allow-root", tmp.path, "--work-root", workRoot,
    ]);
    await w.start();
    workers.push(w);
  }
  const coordinatorPort = await freePort();
  const coordinator = new Service("coordinator", [
    "--listen", `127.0.0.1:${coordinatorPort}`, "--nats", nats.url, "--work-root", workRoot, "--allow-root", tmp.path,
    "--stall-timeout", String(STALL_S), ...workers.flatMap((w) => ["--worker", w.current!.address]),
  ]);
  await coordinator.start();
  // The port is fixed: this one client reaches whichever coordinator runs.
  const client = jobClient(`127.0.0.1:${coordinatorPort}`);
  const faults: Record<Kind, number> = { worker_sigkill: 0, worker_sigstop: 0, coordinator_restart: 0, nats_restart: 0 };
  const pending: Promise<void>[] = [];
  try {
    const jobs: { id: string; spec: number; out: string }[] = [];
    for (let i = 0; i < JOBS; i++) {
      const spec = i % SPECS.length;
      const out = join(tmp.path, `out-${i}`);
      const { job } = await client.submitJob({ spec: { ...model, ...SPECS[spec], out, workers: rng.int(0, WORKERS) } });
      jobs.push({ id: job!.id, spec, out });
    }
    const states = new Map<string, JobState>();
    const allEnded = () => jobs.every((j) => [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED].includes(states.get(j.id) ?? JobState.PENDING));
    const poll = async () => {
      for (const j of jobs) {
        try {
          states.set(j.id, (await client.getJob({ id: j.id }, { deadlineMs: 3000 })).state);
        } catch {
          // coordinator restarting
        }
      }
    };

    // Faults: each kind once first (in a seeded order), then seeded picks; never all workers down.
    const kinds: Kind[] = ["worker_sigkill", "worker_sigstop", "coordinator_restart", "nats_restart"];
    for (let i = kinds.length - 1; i > 0; i--) {
      const j = rng.int(0, i);
      [kinds[i], kinds[j]] = [kinds[j]!, kinds[i]!];
    }
    let stoppedNow = 0;
    const faultEnd = performance.now() + FAULT_WINDOW_MS;
    for (let n = 0; n < MAX_FAULTS && performance.now() < faultEnd; n++) {
      await sleep(n < 4 ? rng.int(1000, 2000) : rng.int(2000, 5000));
      await poll();
      if (allEnded()) break;
      const kind = kinds[n] ?? (["worker_sigkill", "worker_sigstop", "coordinator_restart", "nats_restart"] as const)[rng.int(0, 3)]!;
      const candidates = workers.filter((w) => !w.stopped);
      if (kind === "worker_sigkill" && candidates.length > 1) {
        const w = candidates[rng.int(0, candidates.length - 1)]!;
        await w.kill("SIGKILL");
        faults.worker_sigkill++;
        await sleep(rng.int(200, 1500));
        await w.start();
      } else if (kind === "worker_sigstop" && candidates.length > 1 && stoppedNow === 0) {
        const w = candidates[rng.int(0, candidates.length - 1)]!;
        w.current!.child.kill("SIGSTOP");
        w.stopped = true;
        stoppedNow++;
        faults.worker_sigstop++;
        pending.push(sleep(STOP_S * 1000).then(() => {
          w.current?.child.kill("SIGCONT");
          w.stopped = false;
          stoppedNow--;
        }));
      } else if (kind === "coordinator_restart") {
        await coordinator.kill(rng.next() < 0.5 ? "SIGKILL" : "SIGTERM");
        faults.coordinator_restart++;
        await coordinator.start();
      } else if (kind === "nats_restart") {
        await nats.restart();
        natsPids.add(nats.pid);
        faults.nats_restart++;
      }
    }
    await Promise.all(pending);

    const deadline = performance.now() + JOBS_DEADLINE_MS;
    while (!allEnded() && performance.now() < deadline) {
      await sleep(500);
      await poll();
    }
    // What the coordinator saw: shard failures by cause, from each job's event history.
    const shardFailures: Record<string, number> = {};
    const histories = new Map<string, Awaited<ReturnType<typeof waitForJob>>["events"]>();
    for (const j of jobs) {
      if (!allEnded()) break;
      const { events } = await waitForJob(client, j.id, 60_000);
      histories.set(j.id, events);
      for (const e of events) if (e.event.case === "shardFailed") shardFailures[e.event.value.cause] = (shardFailures[e.event.value.cause] ?? 0) + 1;
    }
    const seconds = (performance.now() - started) / 1000;
    const line = { soak: { seed: SEED, jobs: JOBS, workers: WORKERS, stallTimeoutS: STALL_S, faults, totalFaults: Object.values(faults).reduce((a, b) => a + b, 0), shardFailures, seconds: Math.round(seconds) } };
    process.stdout.write(JSON.stringify(line) + "\n");
    mkdirSync(join(REPO, ".work"), { recursive: true });
    writeFileSync(join(REPO, ".work", "soak-faults.json"), JSON.stringify(line) + "\n", { flag: "w" });

    for (const j of jobs) {
      const final = await client.getJob({ id: j.id }, { deadlineMs: 10_000 });
      assert.equal(final.state, JobState.SUCCEEDED, `${j.id}: ${JobState[final.state]} ${final.reason}`);
      assert.ok(readFileSync(join(j.out, "model.onnx.data")).equals(reference[j.spec]!), `${j.id} is bit-identical to atvp prune`);
      assert.deepEqual(readdirSync(j.out).sort(), ["model.onnx", "model.onnx.data", "report.json"], `${j.id}: only the finished output`);
      assert.deepEqual(openBlockStarts(histories.get(j.id) ?? []), [], `${j.id}: every block_started is closed`);
    }
    for (const [kind, n] of Object.entries(faults)) assert.ok(n > 0, `no ${kind} was injected while the jobs ran`);
  } finally {
    client.close();
    for (const w of workers) w.current?.child.kill("SIGCONT");
    await coordinator.kill("SIGTERM");
    for (const w of workers) await w.kill("SIGTERM");
    await nats.stop();
  }
  // Nothing left behind: no process we started, no work folder.
  for (const pid of [...pids, ...natsPids]) assert.ok(!isAlive(pid), `process ${pid} is still running`);
  assert.deepEqual(existsSync(workRoot) ? readdirSync(workRoot) : [], [], "no job work folder left");
});
