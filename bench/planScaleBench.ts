/**
 * The plan-scale rig of test/cluster/planScale.test.ts (test/support/planScale.ts) measured: one
 * coordinator (a child process) driving 64 in-process workers over loopback gRPC on an 80-block
 * generated model of tiny blocks. Reports the coordinator's CPU time per block and the NATS
 * messages per block (the test checks how the messages grow; this only measures).
 */
import type { BenchLine } from "./benchLine.js";
import { PlanScaleRig } from "../test/support/planScale.js";

const BLOCKS = 80;
const WORKERS = 64;

export async function benchPlanScale(): Promise<BenchLine[]> {
  const rig = await PlanScaleRig.start([BLOCKS], WORKERS);
  try {
    const r = await rig.run(BLOCKS, WORKERS);
    return [{
      bench: "plan_scale_coordinator_ms_per_block", value: (1000 * r.coordinatorCpuSeconds) / BLOCKS, unit: "ms",
      workers: WORKERS, blocks: BLOCKS, nats_messages_per_block: r.messages / BLOCKS, coordinator_cpu_seconds: r.coordinatorCpuSeconds, shards: r.shards,
    }];
  } finally {
    await rig.close();
  }
}
