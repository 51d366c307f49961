// Scale: one coordinator (a child process, so its CPU time is its own) drives 64 in-process
// workers over loopback gRPC on an 80-block generated model (tiny blocks). Every NATS message
// is counted (a wildcard subscription sees JetStream API calls, KV writes, stream appends and
// replies). The job's messages must grow with blocks + workers, not blocks x workers: runs at
// (B, W) = (40, 8), (80, 8), (40, 64), (80, 64) must add up, (80,64) - (40,64) ≈ (80,8) - (40,8).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "@nats-io/transport-node";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { jobClient, startChild, waitForJob } from "../support/cluster.js";

const tmp = tempDir("plan-scale");
const models = new Map<number, { model: string; calib: string }>();
const workers: WorkerHandle[] = [];
const natsServers: NatsServerHandle[] = [];
const MAX_WORKERS = 64;

before(async () => {
  for (const layers of [40, 80]) {
    const g = await generateModel({ outDir: join(tmp.path, `model-${layers}`), layers, hidden: 16, intermediate: 32, vocab: 32, samples: 2, seqLen: 8, imageTokens: 3, seed: 3 });
    models.set(layers, { model: g.modelPath, calib: g.calibPath });
  }
  for (let i = 0; i < MAX_WORKERS; i++) workers.push(await startWorker({ threads: 1, log: () => {} }));
});
after(async () => {
  for (const w of workers) await w.close();
  for (const n of natsServers) await n.stop();
  tmp.cleanup();
});

/** CPU seconds (user + system) of a process so far, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /, "").split(" ");
  // after "(comm) ": state is field 0, utime 11, stime 12 (man 5 proc: fields 14 and 15)
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

interface Run { blocks: number; workers: number; messages: number; bySubject: Record<string, number>; coordinatorCpuSeconds: number; shards: number }

let counter = 0;
async function run(blocks: number, nWorkers: number): Promise<Run> {
  const nats = await startNatsServer({ dir: join(tmp.path, `nats-${++counter}`) });
  natsServers.push(nats);
  const args = ["--listen", "127.0.0.1:0", "--nats", nats.url, "--work-root", join(tmp.path, `jobs-${counter}`), "--allow-root", tmp.path];
  for (const w of workers.slice(0, nWorkers)) args.push("--worker", w.address);
  const coordinator = await startChild("coordinator", args);
  const nc = await connect({ servers: nats.url });
  const bySubject: Record<string, number> = {};
  let messages = 0;
  let counting = false;
  const sub = nc.subscribe(">");
  void (async () => {
    for await (const m of sub) {
      if (!counting) continue;
      messages++;
      const kind = m.subject.startsWith("_INBOX.") ? "_INBOX" : m.subject.split(".").slice(0, 2).join(".");
      bySubject[kind] = (bySubject[kind] ?? 0) + 1;
    }
  })();
  await nc.flush();
  const client = jobClient(coordinator.address);
  try {
    const cpuBefore = cpuSeconds(coordinator.pid);
    counting = true;
    const m = models.get(blocks)!;
    const { job } = await client.submitJob({ spec: { model: m.model, calib: m.calib, out: join(tmp.path, `out-${counter}`), method: "wanda", sparsity: 0.5, propagation: "sequential", workers: nWorkers } });
    const result = await waitForJob(client, job!.id, 300_000);
    const final = await client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
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

// A message per (block, shard) pair would add (80-40) x (32-8) = 960 to the difference of
// differences below; what is allowed is a few messages of noise (a retried KV write, a heartbeat).
const SLACK = 48;

test("64 workers, 80 blocks: NATS messages grow with blocks + workers, not blocks x workers", { timeout: 600_000 }, async () => {
  const runs = new Map<string, Run>();
  for (const [b, w] of [[40, 8], [80, 8], [40, 32], [80, 32], [80, 64]] as const) {
    const r = await run(b, w);
    assert.equal(r.shards, w, "one stage per worker");
    runs.set(`${b}x${w}`, r);
    process.stdout.write(JSON.stringify({ blocks: b, workers: w, messages: r.messages, messagesPerBlock: r.messages / b, coordinatorMsPerBlock: (1000 * r.coordinatorCpuSeconds) / b, bySubject: r.bySubject }) + "\n");
  }
  const m = (key: string) => runs.get(key)!.messages;
  const perBlockAt8 = m("80x8") - m("40x8");
  const perBlockAt32 = m("80x32") - m("40x32");
  assert.ok(Math.abs(perBlockAt32 - perBlockAt8) <= SLACK,
    `40 more blocks cost ${perBlockAt8} messages on 8 workers but ${perBlockAt32} on 32: messages grow with blocks x workers`);
  // Per added worker at 40 blocks, extrapolated to 64 workers at 80 blocks: additive, so it holds.
  const perWorker = (m("40x32") - m("40x8")) / 24;
  const predicted = m("80x32") + perWorker * 32;
  assert.ok(Math.abs(m("80x64") - predicted) <= SLACK, `80 blocks x 64 workers: ${m("80x64")} messages, ${predicted.toFixed(0)} if they only grow with blocks + workers`);
  assert.ok(perBlockAt8 > 0 && perWorker > 0, "the counter sees the job's messages");
});
