// A real local cluster for tests: nats-server, workers and a coordinator on 127.0.0.1, each in
// this process or in a child process (when a test kills it).
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import * as grpc from "@grpc/grpc-js";
import { JobService, JobState, type JobEvent } from "../../services/gen/atvprune/v1/job_pb.js";
import { createClient, type Client } from "../../services/rpc/grpcAdapter.js";
import { REPO } from "./fixtures.js";
import { openBlockStarts as findOpenBlocks } from "../../services/coordinator/src/openBlocks.js";
import { startCoordinator } from "../../services/coordinator/src/coordinator.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";

export type JobClient = Client<typeof JobService>;

export function jobClient(address: string, creds = grpc.credentials.createInsecure(), options: grpc.ChannelOptions = {}): JobClient {
  return createClient(JobService, address, creds, options);
}

export interface ChildService {
  address: string;
  metricsPort?: number;
  pid: number;
  child: ChildProcess;
  /** what it wrote on stderr so far */
  stderr(): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts dist/services/<which>/src/main.js and waits (bounded) for its {"ready":true} line. */
export async function startChild(which: "worker" | "coordinator", args: string[], logFile?: string): Promise<ChildService> {
  const child = spawn(process.execPath, [join(REPO, `dist/services/${which}/src/main.js`), ...args], { stdio: ["ignore", "pipe", "pipe"] });
  const stderr: string[] = [];
  child.stderr!.on("data", (d: Buffer) => { stderr.push(d.toString()); if (logFile) process.stderr.write(""); });
  const lines = createInterface({ input: child.stdout! });
  const ready = await new Promise<{ address: string; metricsPort?: number }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${which} did not become ready: ${stderr.join("")}`)), 20_000);
    lines.once("line", (line) => { clearTimeout(timer); resolve(JSON.parse(line)); });
    child.once("exit", (code) => { clearTimeout(timer); reject(new Error(`${which} exited ${code}: ${stderr.join("")}`)); });
  });
  return {
    ...ready,
    pid: child.pid!,
    child,
    stderr: () => stderr.join(""),
    kill: (signal = "SIGKILL") => new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once("exit", () => resolve());
      child.kill(signal);
    }),
  };
}

/** Collects a job's events until its terminal state (bounded). */
export async function waitForJob(client: JobClient, id: string, timeoutMs = 120_000, onEvent?: (e: JobEvent) => void | Promise<void>): Promise<{ state: JobState; events: JobEvent[] }> {
  const deadline = Date.now() + timeoutMs;
  const events: JobEvent[] = [];
  for (;;) {
    try {
      const stream = client.watchJob({ id }, { deadlineMs: Math.max(1000, deadline - Date.now()) });
      events.length = 0;
      for await (const e of stream) {
        events.push(e);
        await onEvent?.(e);
        if (e.event.case === "stateChanged" && [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED].includes(e.event.value.state)) {
          return { state: e.event.value.state, events };
        }
      }
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 300)); // coordinator restarting: watch again
    }
  }
}

/** block_started events left open (services/coordinator/src/openBlocks.ts), as {block, worker}. */
export function openBlockStarts(events: readonly JobEvent[]): Array<{ block: number; worker: string }> {
  return findOpenBlocks(events).map(({ block, worker }) => ({ block, worker }));
}

/**
 * A job-event handler that SIGKILLs the worker running the shard that starts at `firstBlock`
 * once that block has finished (a worker dying mid-job, after it wrote something). The victim is
 * looked up when the block starts, so the kill itself waits on no call: a slow lookup at the
 * finish let a short shard end before the kill arrived.
 */
export function killShardWorkerAfter(client: JobClient, jobId: () => string, firstBlock: number, children: readonly ChildService[]) {
  const state: { killed: ChildService | undefined; victim: ChildService | undefined; onEvent: (e: JobEvent) => Promise<void> } = {
    killed: undefined,
    victim: undefined,
    async onEvent(e) {
      const ev = e.event;
      if (state.killed || (ev.case !== "blockStarted" && ev.case !== "blockFinished") || ev.value.block !== firstBlock) return;
      if (ev.case === "blockStarted" || !state.victim) {
        const shard = (await client.getJob({ id: jobId() })).shards.find((x) => x.firstBlock === firstBlock);
        state.victim = children.find((c) => c.address === shard?.worker);
      }
      if (ev.case === "blockFinished" && state.victim) {
        state.killed = state.victim;
        await state.victim.kill("SIGKILL");
      }
    },
  };
  return state;
}

/** `workers` in-process workers and a coordinator over them, ready; close() stops them all. */
export async function startLocalCluster(natsUrl: string, workers: number, root: string) {
  const ws: WorkerHandle[] = [];
  for (let i = 0; i < workers; i++) ws.push(await startWorker({ threads: 1, log: () => {} }));
  const coordinator = await startCoordinator({ nats: natsUrl, workers: ws.map((w) => w.address), workRoot: join(root, "jobs"), allowedRoots: [root], metricsPort: 0, log: () => {} });
  const client = jobClient(coordinator.address);
  await coordinator.pool.waitForReady(workers, 10_000);
  return {
    client, coordinator, workers: ws,
    async close() {
      client.close();
      await coordinator.close();
      for (const w of ws) await w.close();
    },
  };
}
