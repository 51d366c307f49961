/**
 * The data plane's throughput between two workers on loopback, each in its own process as in a
 * cluster. stream_mb_per_s: PullStates of ~256 MB of boundary states from an upstream worker's
 * outbox (streamServer.ts, a child process) into this process's puller, the real client path
 * with reassembly into tensors. stream_vs_raw_grpc: that over a plain grpc-js server stream of
 * the same bytes in 1 MiB raw Buffers (no protobuf-es, no reassembly) between the same two
 * processes, measured in the same run, alternating, medians of several rounds.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { GRPC_OPTIONS } from "../services/rpc/credentials.js";
import { DATA_PLANE_CHANNEL_OPTIONS, UpstreamStates } from "../services/worker/src/dataplane/upstreamStates.js";
import type { BenchLine } from "./benchLine.js";

const SERVER = fileURLToPath(new URL("./streamServer.js", import.meta.url));
const MiB = 1 << 20;
const SAMPLES = 64;
/** one sample's state: a [1, 512, 2048] float32 hidden state = 4 MiB (256 MiB in all) */
const TOKENS = 512;
const HIDDEN = 2048;
const ROUNDS = 5;
/** the worker's data-plane channel options, for both clients: the comparison is of the payload path */
const CHANNEL_OPTIONS: grpc.ChannelOptions = { ...GRPC_OPTIONS, ...DATA_PLANE_CHANNEL_OPTIONS };

const RAW_METHOD: grpc.MethodDefinition<Buffer, Buffer> = {
  path: "/bench.Raw/Stream", requestStream: false, responseStream: true,
  requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b,
  responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b,
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** Seconds to pull every sample of `job` from the upstream worker. */
async function pullOnce(address: string, job: string, dir: string): Promise<number> {
  const abort = new AbortController();
  const started = performance.now();
  const puller = new UpstreamStates({
    jobId: job, block: 1, count: SAMPLES, upstream: address, statesFile: join(dir, `${job}.bin`),
    credentials: grpc.credentials.createInsecure(), channelOptions: CHANNEL_OPTIONS, signal: abort.signal,
  });
  const got = await puller.complete;
  const seconds = (performance.now() - started) / 1000;
  abort.abort();
  if (got.length !== SAMPLES) throw new Error(`pulled ${got.length} of ${SAMPLES} samples`);
  return seconds;
}

/** Seconds for a plain grpc-js server stream of `messages` 1 MiB Buffers. */
async function rawOnce(address: string, messages: number): Promise<number> {
  const Ctor = grpc.makeGenericClientConstructor({ Stream: RAW_METHOD }, "Raw");
  const client = new Ctor(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS) as unknown as grpc.Client & { Stream(req: Buffer): grpc.ClientReadableStream<Buffer> };
  const started = performance.now();
  let bytes = 0;
  await new Promise<void>((resolve, reject) => {
    const call = client.Stream(Buffer.from(String(messages)));
    call.on("data", (b: Buffer) => (bytes += b.length));
    call.on("error", reject);
    call.on("end", resolve);
  });
  client.close();
  if (bytes !== messages * MiB) throw new Error(`raw stream got ${bytes} bytes`);
  return (performance.now() - started) / 1000;
}

export async function benchStream(): Promise<BenchLine[]> {
  const dir = mkdtempSync(join(tmpdir(), "atvp-stream-bench-"));
  const child = spawn(process.execPath, [SERVER, String(SAMPLES), String(TOKENS), String(HIDDEN), String(ROUNDS)], { stdio: ["ignore", "pipe", "inherit"] });
  try {
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once("line", resolve);
      child.once("exit", (code) => reject(new Error(`stream bench server exited ${code}`)));
    });
    const { worker, raw } = JSON.parse(line) as { worker: string; raw: string };
    const bytes = SAMPLES * TOKENS * HIDDEN * 4;
    // Warm both paths (connections, JIT), then alternate them and take medians: loopback
    // throughput on a busy machine swings run to run, and a best-of picks outliers.
    await pullOnce(worker, "warm", dir);
    await rawOnce(raw, bytes / MiB);
    const pulls: number[] = [];
    const plains: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      pulls.push(await pullOnce(worker, `run${i}`, dir));
      plains.push(await rawOnce(raw, bytes / MiB));
    }
    const mbPerS = bytes / 1e6 / median(pulls);
    const rawMbPerS = bytes / 1e6 / median(plains);
    return [
      { bench: "stream_mb_per_s", value: mbPerS, unit: "MB/s", bytes, samples: SAMPLES, rounds: ROUNDS, processes: 2 },
      { bench: "stream_vs_raw_grpc", value: mbPerS / rawMbPerS, unit: "ratio", rawMbPerS, bytes },
    ];
  } finally {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}
