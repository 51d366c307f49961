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
