/**
 * Cluster figures, measured in one run against the single process:
 * - cluster2_over_local: seconds for 2 local workers to prune the medium generated model, over
 *   `atvp prune` on the same machine with the same onnxruntime threads;
 * - worker_peak_rss_over_shard_bytes: the larger peak RSS of the 2 workers pruning the large
 *   generated model, over the weight bytes of that worker's shard.
 * - dp2_speedup: `atvp prune` on one thread over a local cluster of 2 data-parallel replicas with
 *   one thread each (sequential ATV, the medium model): what splitting the samples buys.
 * - dp2_ceiling: the same `atvp prune` over two of them run at once, each on half the samples
 *   and no exchange: what this machine's two cores give the same work split in two, measured in
 *   the same rounds; dp2_efficiency is dp2_speedup over it (what the cluster itself costs).
 * - dp2_cpu_over_single: the CPU seconds the two replicas burn together over the single
 *   process's, main thread and the rest apart: the work splitting adds, wherever it waits.
 * - dp2_speedup_4x_tokens, dp2_ceiling_4x_tokens, dp2_efficiency_4x_tokens: the same three with
 *   32 samples x 256 tokens, in rounds of their own.
 * - dp2_speedup_sparsegpt: the same for SparseGPT on 8 samples, one run each: what sharing a
 *   block's solves between the replicas and chaining the Hessians' reduction buys.
 * - plan_predicted_over_measured (planAccuracy.ts): what `atvp plan` predicts for these jobs,
 *   from a cost table measured in the same run, over what they took.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { JobService, JobState } from "../services/gen/atvprune/v1/job_pb.js";
import { createClient } from "../services/rpc/grpcAdapter.js";
import { generateModel, type GenModelOptions } from "../services/core/src/gen/genModel.js";
import { analyzeModel } from "../services/core/src/pipeline/modelAnalysis.js";
import { TensorData } from "../services/core/src/onnx/tensorData.js";
import { startNatsServer } from "../services/coordinator/src/state/natsServer.js";
import { startCoordinator } from "../services/coordinator/src/coordinator.js";
import type { BenchLine } from "./benchLine.js";
import { pruneInChild, pruneInChildAsync, type ChildPrune } from "./pruneBench.js";
import { cpuDelta, cpuSecondsOf, type CpuSeconds } from "./cpuTime.js";
import { planAccuracyLines } from "./planAccuracy.js";
import { WORKER_NODE_FLAGS } from "../services/worker/src/nodeFlags.js";

const WORKER_MAIN = fileURLToPath(new URL("../services/worker/src/main.js", import.meta.url));

async function startWorkerProcess(threads: number, allowRoot: string): Promise<{ address: string; pid: number; stop(): Promise<void> }> {
  // As the worker image and `atvp cluster up` run it.
  const child = spawn(process.execPath, [...WORKER_NODE_FLAGS, WORKER_MAIN, "--listen", "127.0.0.1:0", "--threads", String(threads), "--insecure", "--allow-root", allowRoot], { stdio: ["ignore", "pipe", "inherit"] });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", resolve);
    child.once("exit", (code) => reject(new Error(`worker exited ${code}`)));
  });
  const { address } = JSON.parse(line) as { address: string };
  return {
    address, pid: child.pid!,
    stop: () => new Promise((resolve) => { child.once("exit", () => resolve()); child.kill("SIGTERM"); }),
  };
}

function peakRss(pid: number): number {
  const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return Number(kb) * 1024;
}

async function clusterRun(workDir: string, name: string, model: { modelPath: string; calibPath: string }, threads: number, replicas = 1, what: { method: string; nsamples?: number } = { method: "atv" }) {
  const nats = await startNatsServer({ dir: join(workDir, `nats-${name}`) });
  const workers = [await startWorkerProcess(threads, workDir), await startWorkerProcess(threads, workDir)];
  const coordinator = await startCoordinator({
    nats: nats.url, workers: workers.map((w) => w.address), workRoot: join(workDir, `jobs-${name}`), allowedRoots: [workDir], log: () => {},
  });
  const client = createClient(JobService, coordinator.address, grpc.credentials.createInsecure());
  try {
    await coordinator.pool.waitForReady(2, 20_000);
    const cpu0 = workers.map((w) => cpuSecondsOf(w.pid));
    const t0 = performance.now();
    const { job } = await client.submitJob({ spec: { model: model.modelPath, calib: model.calibPath, out: join(workDir, `${name}-cluster-out`), sparsity: 0.5, force: true, replicas, ...what } });
    for await (const e of client.watchJob({ id: job!.id })) {
      if (e.event.case === "stateChanged" && e.event.value.state >= JobState.SUCCEEDED) break;
    }
    const seconds = (performance.now() - t0) / 1000;
    const cpu = workers.map((w, i) => cpuDelta(cpuSecondsOf(w.pid), cpu0[i]!)).reduce(sumCpu);
    const final = await client.getJob({ id: job!.id });
    if (final.state !== JobState.SUCCEEDED) throw new Error(`cluster job ${final.state}: ${final.reason}`);
    const rss = new Map(workers.map((w) => [w.address, peakRss(w.pid)]));
    if (final.replicas !== replicas) throw new Error(`the cluster ran ${final.replicas} replicas, the bench asked ${replicas}`);
    return { seconds, cpu, shards: final.shards.map((s) => ({ first: s.firstBlock, end: s.endBlock, rss: rss.get(s.worker) ?? 0 })) };
  } finally {
    client.close();
    await coordinator.close();
    for (const w of workers) await w.stop();
    await nats.stop();
  }
}

/** Alternating single and cluster runs behind dp2_speedup. */
const DP2_ROUNDS = 3;

function sumCpu(a: CpuSeconds, b: CpuSeconds): CpuSeconds {
  return { process: a.process + b.process, mainThread: a.mainThread + b.mainThread };
}

function childCpu(r: ChildPrune): CpuSeconds {
  return { process: r.cpuSeconds, mainThread: r.mainThreadCpuSeconds };
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** One round's CPU seconds over the single process's: the replicas' (all, main thread, the rest) and the pair's. */
interface CpuRatios { all: number; main: number; rest: number; pair: number }

/**
 * DP2_ROUNDS rounds of: `atvp prune --threads 1` on all `samples`; 2 replicas of one thread
 * each on a local cluster; two `atvp prune --threads 1` at once on half the samples each. This
 * machine's speed drifts by 20-30% over minutes, so the three alternate and the ratios are of
 * their medians (every time is in the lines).
 */
async function dp2Rounds(workDir: string, tag: string, m: { modelPath: string; calibPath: string }, samples: number) {
  const singles: number[] = [];
  const clusters: number[] = [];
  const pairs: number[] = [];
  const cpuRatios: CpuRatios[] = [];
  const oneThread = { model: m.modelPath, calib: m.calibPath, method: "atv", sparsity: 0.5, force: true, threads: 1 };
  for (let i = 0; i < DP2_ROUNDS; i++) {
    const one = pruneInChild({ ...oneThread, out: join(workDir, `cluster-${tag}-local-1t`) });
    singles.push(one.seconds);
    const replicated = await clusterRun(workDir, `${tag}-dp2-${i}`, m, 1, 2);
    clusters.push(replicated.seconds);
    const halves = await Promise.all([0, 1].map((h) => pruneInChildAsync({ ...oneThread, nsamples: samples / 2, out: join(workDir, `cluster-${tag}-half-${h}`) })));
    pairs.push(Math.max(...halves.map((r) => r.seconds)));
    const base = childCpu(one);
    const pairCpu = halves.map(childCpu).reduce(sumCpu);
    cpuRatios.push({
      all: replicated.cpu.process / base.process,
      main: replicated.cpu.mainThread / base.mainThread,
      rest: (replicated.cpu.process - replicated.cpu.mainThread) / (base.process - base.mainThread),
      pair: pairCpu.process / base.process,
    });
  }
  return { singles, clusters, pairs, cpuRatios };
}

/** dp2_speedup, dp2_ceiling and dp2_efficiency (names + suffix) from the medians of the rounds. */
function dp2Lines(rounds: Awaited<ReturnType<typeof dp2Rounds>>, suffix: string, shape: Record<string, number>): { lines: BenchLine[]; clusterSeconds: number } {
  const localSeconds = median(rounds.singles);
  const clusterSeconds = median(rounds.clusters);
  const pairSeconds = median(rounds.pairs);
  const speedup = localSeconds / clusterSeconds;
  const ceiling = localSeconds / pairSeconds;
  return {
    clusterSeconds,
    lines: [
      { bench: `dp2_speedup${suffix}`, value: speedup, unit: "ratio", localSeconds, clusterSeconds, localRuns: rounds.singles, clusterRuns: rounds.clusters, replicas: 2, threadsPerWorker: 1, goal: 1.6, ...shape },
      { bench: `dp2_ceiling${suffix}`, value: ceiling, unit: "ratio", localSeconds, pairSeconds, pairRuns: rounds.pairs, ...shape, note: "two atvp prune --threads 1 at once, each on half the samples, no exchange: this machine's two cores on the same work split in two" },
      { bench: `dp2_efficiency${suffix}`, value: speedup / ceiling, unit: "ratio", ...shape, note: "dp2_speedup over dp2_ceiling: what the cluster (exchange, checkpoints, coordination) keeps of what the two cores give" },
    ],
  };
}

export async function benchCluster(workDir: string): Promise<BenchLine[]> {
  const lines: BenchLine[] = [];
  const medium: Omit<GenModelOptions, "outDir"> = { layers: 8, hidden: 1024, samples: 16, seqLen: 128, imageTokens: 64 };
  const m = await generateModel({ outDir: join(workDir, "cluster-medium"), force: true, ...medium });
  const local = pruneInChild({ model: m.modelPath, calib: m.calibPath, method: "atv", sparsity: 0.5, out: join(workDir, "cluster-medium-local"), force: true, threads: availableParallelism() });
  // Sequential propagation runs the shards mostly one after another (shard 2 waits for shard 1's
  // output), so each worker gets the same onnxruntime threads as the single process: the ratio
  // is then the cost of distribution itself (streaming, checkpoints, coordination).
  const threads = availableParallelism();
  const remote = await clusterRun(workDir, "medium", m, threads);
  lines.push({ bench: "cluster2_over_local", value: remote.seconds / local.seconds, unit: "ratio", clusterSeconds: remote.seconds, localSeconds: local.seconds, threadsPerWorker: threads, ...medium });
  const narrow = await clusterRun(workDir, "medium-1t", m, 1);
  lines.push({ bench: "cluster2_1thread_over_local", value: narrow.seconds / local.seconds, unit: "ratio", clusterSeconds: narrow.seconds, note: "each worker 1 thread (the machine's cores split between them)" });
  // Data-parallel: the two replicas each calibrate half of the samples on one thread.
  const rounds = await dp2Rounds(workDir, "medium", m, medium.samples!);
  const { cpuRatios } = rounds;
  const dp = dp2Lines(rounds, "", {});
  lines.push(...dp.lines);
  lines.push({
    bench: "dp2_cpu_over_single", value: median(cpuRatios.map((r) => r.all)), unit: "ratio",
    mainThreadOverSingle: median(cpuRatios.map((r) => r.main)), restOverSingle: median(cpuRatios.map((r) => r.rest)),
    pairOverSingle: median(cpuRatios.map((r) => r.pair)), rounds: cpuRatios,
    note: "CPU seconds of the 2 replicas together over atvp prune --threads 1's (1 = splitting adds no work); main thread: statistics, masks, exchange, gRPC; rest: onnxruntime, file I/O, GC; pair: the two half-sample prunes of dp2_ceiling",
  });
  lines.push({ bench: "cluster2_dp_over_local", value: dp.clusterSeconds / local.seconds, unit: "ratio", clusterSeconds: dp.clusterSeconds, localSeconds: local.seconds, note: "2 replicas x 1 thread vs atvp prune on every core" });
  // The same with 4x the calibration tokens (32 samples x 256): the per-block costs every replica
  // pays whole (reading weights, masks, applying them) weigh less, as in the reference setup
  // (128 samples x ~1,500 tokens).
  const longShape = { samples: 32, seqLen: 256 };
  const long = await generateModel({ outDir: join(workDir, "cluster-medium-long"), force: true, ...medium, ...longShape, imageTokens: 128 });
  const longRounds = await dp2Rounds(workDir, "medium-long", long, longShape.samples);
  const longDp = dp2Lines(longRounds, "_4x_tokens", longShape);
  lines.push(...longDp.lines);

  // SparseGPT on 2 replicas: each solves its share of a block's linears, the Hessians go down a
  // chain; one round each (a single-thread run is ~1.5 min), 8 samples.
  const sgJob = { method: "sparsegpt", nsamples: 8 };
  const sgSingle = pruneInChild({ model: m.modelPath, calib: m.calibPath, sparsity: 0.5, force: true, threads: 1, ...sgJob, out: join(workDir, "cluster-sparsegpt-local-1t") });
  const sgCluster = await clusterRun(workDir, "medium-sparsegpt-dp2", m, 1, 2, sgJob);
  lines.push({
    bench: "dp2_speedup_sparsegpt", value: sgSingle.seconds / sgCluster.seconds, unit: "ratio", localSeconds: sgSingle.seconds, clusterSeconds: sgCluster.seconds,
    replicas: 2, threadsPerWorker: 1, ...medium, samples: 8, note: "sparsegpt, atvp prune --threads 1 over 2 replicas of one thread (the compress step shared out, the Hessians reduced in a chain)",
  });

  const big = await generateModel({ outDir: join(workDir, "cluster-large"), force: true, layers: 10, hidden: 1536, samples: 16, seqLen: 128, imageTokens: 64 });
  const run = await clusterRun(workDir, "large", big, 1);
  const a = analyzeModel(big.modelPath);
  const data = new TensorData(a.loaded);
  const blockBytes = a.partition.blockLinears.map((ls) => ls.reduce((s, l) => s + data.byteLength(a.index.initializers.get(l.weight)!), 0));
  await data.close();
  const ratios = run.shards.map((s) => s.rss / blockBytes.slice(s.first, s.end).reduce((x, y) => x + y, 0));
  lines.push({ bench: "worker_peak_rss_over_shard_bytes", value: Math.max(...ratios), unit: "ratio", perWorker: ratios, weightBytes: big.weightBytes });

  const job = (name: string, model: string, method: string, samples: number, tokensPerSample: number, workers: number, replicas: number, seconds: number) => ({ name, model, method, samples, tokensPerSample, workers, replicas, seconds });
  lines.push(...await planAccuracyLines(workDir, [
    job("atv medium, 1 process", m.modelPath, "atv", medium.samples!, medium.seqLen!, 1, 1, median(rounds.singles)),
    job("atv medium, 2 replicas", m.modelPath, "atv", medium.samples!, medium.seqLen!, 2, 2, dp.clusterSeconds),
    job("atv medium 4x tokens, 1 process", long.modelPath, "atv", longShape.samples, longShape.seqLen, 1, 1, median(longRounds.singles)),
    job("atv medium 4x tokens, 2 replicas", long.modelPath, "atv", longShape.samples, longShape.seqLen, 2, 2, longDp.clusterSeconds),
    job("sparsegpt medium, 1 process", m.modelPath, "sparsegpt", sgJob.nsamples, medium.seqLen!, 1, 1, sgSingle.seconds),
    job("sparsegpt medium, 2 replicas", m.modelPath, "sparsegpt", sgJob.nsamples, medium.seqLen!, 2, 2, sgCluster.seconds),
    job("atv large, 2 stages", big.modelPath, "atv", 16, 128, 2, 1, run.seconds),
  ]));
  return lines;
}
