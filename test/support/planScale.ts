// The plan-scale rig shared by test/cluster/planScale.test.ts (growth properties) and
// bench/planScaleBench.ts (the measurement): in-process workers over loopback gRPC, generated
// models of tiny blocks (hidden 16), and per run a fresh nats-server and a coordinator in a child
// process (so its CPU time is its own), with every NATS message counted by a wildcard
// subscription (JetStream API calls, KV writes, stream appends and replies).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "./fixtures.js";
import { jobClient, startChild, waitForJob } from "./cluster.js";

export interface PlanScaleRun {
  blocks: number;
  workers: number;
  messages: number;
  bySubject: Record<string, number>;
  coordinatorCpuSeconds: number;
  shards: number;
}

/** CPU seconds (user + system) of a process so far, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /, "").split(" ");
  // after "(comm) ": state is field 0, utime 11, stime 12 (man 5 proc: fields 14 and 15)
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

export class PlanScaleRig {
  private readonly natsServers: NatsServerHandle[] = [];
  private counter = 0;

  private constructor(
    private readonly tmp: ReturnType<typeof tempDir>,
    private readonly models: Map<number, { model: string; calib: string }>,
    private readonly workers: WorkerHandle[],
  ) {}

  /** Generates one model per block count and starts `maxWorkers` in-process workers. */
  static async start(blockCounts: readonly number[], maxWorkers: number): Promise<PlanScaleRig> {
    const tmp = tempDir("plan-scale");
    const models = new Map<number, { model: string; calib: string }>();
    const workers: WorkerHandle[] = [];
    const rig = new PlanScaleRig(tmp, models, workers);
    try {
      for (const layers of blockCounts) {
        const g = await generateModel({ outDir: join(tmp.path, `model-${layers}`), layers, hidden: 16, intermediate: 32, vocab: 32, samples: 2, seqLen: 8, imageTokens: 3, seed: 3 });
        models.set(layers, { model: g.modelPath, calib: g.calibPath });
      }
      for (let i = 0; i < maxWorkers; i++) workers.push(await startWorker({ threads: 1, log: () => {} }));
      return rig;
    } catch (err) {
      await rig.close();
      throw err;
    }
  }

  /** Prunes the `blocks`-block model (sequential Wanda) on the first `nWorkers` workers. */
  async run(blocks: number, nWorkers: number): Promise<PlanScaleRun> {
    const m = this.models.get(blocks);
    if (!m) throw new Error(`no ${blocks}-block model in this rig (it has ${[...this.models.keys()].join(", ")})`);
    if (nWorkers > this.workers.length) throw new Error(`${nWorkers} workers asked, the rig started ${this.workers.length}`);
    const n = ++this.counter;
    const dir = this.tmp.path;
    const nats = await startNatsServer({ dir: join(dir, `nats-${n}`) });
    this.natsServers.push(nats);
    const args = ["--listen", "127.0.0.1:0", "--nats", nats.url, "--work-root", join(dir, `jobs-${n}`), "--allow-root", dir];
    for (const w of this.workers.slice(0, nWorkers)) args.push("--worker", w.address);
    const coordinator = await startChild("coordinator", args);
    const nc = await connect({ servers: nats.url });
    const bySubject: Record<string, number> = {};
    let messages = 0;
    let counting = false;
    const sub = nc.subscribe(">");
    void (async () => {
      for await (const msg of sub) {
        if (!counting) continue;
        messages++;
        const kind = msg.subject.startsWith("_INBOX.") ? "_INBOX" : msg.subject.split(".").slice(0, 2).join(".");
        bySubject[kind] = (bySubject[kind] ?? 0) + 1;
      }
    })();
    await nc.flush();
    const client = jobClient(coordinator.address);
    try {
      const cpuBefore = cpuSeconds(coordinator.pid);
      counting = true;
      const { job } = await client.submitJob({ spec: { model: m.model, calib: m.calib, out: join(dir, `out-${n}`), method: "wanda", sparsity: 0.5, propagation: "sequential", workers: nWorkers } });
      const result = await waitForJob(client, job!.id, 300_000);
      const final = await client.getJob({ id: job!.id });
      if (result.state !== JobState.SUCCEEDED) throw new Error(`plan-scale job ${job!.id} (${blocks} blocks, ${nWorkers} workers) ended ${JobState[result.state]}: ${final.reason}`);
      await nc.flush();
      counting = false;
      return { blocks, workers: nWorkers, messages, bySubject, coordinatorCpuSeconds: cpuSeconds(coordinator.pid) - cpuBefore, shards: final.shards.length };
    } finally {
      client.close();
      sub.unsubscribe();
      await nc.close();
      await coordinator.kill("SIGTERM");
    }
  }

  async close(): Promise<void> {
    for (const w of this.workers) await w.close();
    for (const n of this.natsServers) await n.stop();
    this.tmp.cleanup();
  }
}
