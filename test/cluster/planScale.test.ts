// Scale: one coordinator (a child process, so its CPU time is its own) drives 64 in-process
// workers over loopback gRPC on an 80-block generated model (tiny blocks); the rig is
// test/support/planScale.ts, which bench/planScaleBench.ts also measures. Every NATS message is
// counted (a wildcard subscription sees JetStream API calls, KV writes, stream appends and
// replies). The job's messages must grow with blocks + workers, not blocks x workers: runs at
// (B, W) = (40, 8), (80, 8), (40, 64), (80, 64) must add up, (80,64) - (40,64) ≈ (80,8) - (40,8).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { PlanScaleRig, type PlanScaleRun } from "../support/planScale.js";

let rig: PlanScaleRig;
before(async () => {
  rig = await PlanScaleRig.start([40, 80], 64);
});
after(() => rig?.close());

// A message per (block, shard) pair would add (80-40) x (32-8) = 960 to the difference of
// differences below; what is allowed is a few messages of noise (a retried KV write, a heartbeat).
const SLACK = 48;

test("64 workers, 80 blocks: NATS messages grow with blocks + workers, not blocks x workers", { timeout: 600_000 }, async () => {
  const runs = new Map<string, PlanScaleRun>();
  for (const [b, w] of [[40, 8], [80, 8], [40, 32], [80, 32], [80, 64]] as const) {
    const r = await rig.run(b, w);
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
