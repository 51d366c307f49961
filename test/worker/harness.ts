// A tiny in-test coordinator for the worker tests: creates the output writer at job start,
// assigns contiguous shards to workers over real gRPC, collects every RunShard stream, then
// marks the pruned weights written and finalizes, as services/coordinator does.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { JobPlan as JobPlanMessage } from "../../services/gen/atvprune/v1/plan_pb.js";
import { WorkerService, type ShardProgress } from "../../services/gen/atvprune/v1/worker_pb.js";
import { WorkerDataService } from "../../services/gen/atvprune/v1/worker_data_pb.js";
import { createClient, type Client } from "../../services/rpc/grpcAdapter.js";
import { GRPC_OPTIONS } from "../../services/rpc/credentials.js";
import { PrunedModelWriter } from "../../services/core/src/onnx/modelWriter.js";
import { prepareOutputDir } from "../../services/core/src/onnx/outputDir.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { analyzeModel } from "../../services/core/src/pipeline/modelAnalysis.js";
import { resolveSpec, type PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { planJob } from "../../services/core/src/plan/jobPlan.js";
import { toPlanMessage } from "../../services/rpc/jobPlanWire.js";

export type WorkerClient = Client<typeof WorkerService>;

export function workerClient(address: string): WorkerClient {
  return createClient(WorkerService, address, grpc.credentials.createInsecure(), { ...GRPC_OPTIONS, "grpc.use_local_subchannel_pool": 1 });
}

/** A client of the worker's data plane (PullStates). */
export function dataClient(address: string): Client<typeof WorkerDataService> {
  return createClient(WorkerDataService, address, grpc.credentials.createInsecure(), { ...GRPC_OPTIONS, "grpc.use_local_subchannel_pool": 1 });
}


export interface ShardCall {
  events: ShardProgress[];
  /** resolves when the stream ends OK, rejects with the grpc error */
  done: Promise<void>;
  cancel(): void;
}

export class MiniCoordinator {
  private readonly clients = new Map<string, WorkerClient>();

  private constructor(
    readonly jobId: string, readonly spec: PruneSpec, readonly plan: JobPlanMessage, readonly workDir: string,
    private readonly writer: PrunedModelWriter, private readonly rewritten: string[], private readonly data: TensorData,
    readonly numBlocks: number,
  ) {}

  static async start(jobId: string, spec: PruneSpec, workDir: string): Promise<MiniCoordinator> {
    const resolved = resolveSpec(spec, 1);
    const analysis = analyzeModel(resolved.model);
    const data = new TensorData(analysis.loaded);
    // The plan, resolved once here as the coordinator resolves it, is what the workers run.
    const plan = planJob(resolved, analysis, data);
    const selected = plan.linears.map((l) => l.weight);
    await prepareOutputDir(resolved.out, true);
    const writer = await PrunedModelWriter.create(analysis.loaded, data, resolved.out, new Set(selected));
    return new MiniCoordinator(jobId, spec, toPlanMessage(plan), workDir, writer, selected, data, analysis.partition.numBlocks);
  }

  client(address: string): WorkerClient {
    let c = this.clients.get(address);
    if (!c) this.clients.set(address, (c = workerClient(address)));
    return c;
  }

  runShard(
    address: string, shard: number, firstBlock: number, endBlock: number, upstream: string,
    opts: { attempt?: number; onEvent?: (p: ShardProgress) => void; heartbeatMs?: number; stallTimeoutMs?: number } = {},
  ): ShardCall {
    const stream = this.client(address).runShard({
      jobId: this.jobId, plan: this.plan, shard, firstBlock, endBlock, upstream, workDir: this.workDir, attempt: opts.attempt ?? 1,
      heartbeatMs: opts.heartbeatMs, stallTimeoutMs: opts.stallTimeoutMs,
    });
    const events: ShardProgress[] = [];
    const done = (async () => {
      for await (const p of stream) {
        events.push(p);
        opts.onEvent?.(p);
      }
    })();
    done.catch(() => {});
    return { events, done, cancel: () => stream.cancel() };
  }

  /** Runs the shards [first, end) on the given workers, each pulling from the previous one. */
  async runAll(addresses: string[], shards: Array<[number, number]>): Promise<ShardCall[]> {
    const calls = shards.map(([first, end], i) => this.runShard(addresses[i]!, i, first, end, i > 0 ? addresses[i - 1]! : ""));
    await Promise.all(calls.map((c) => c.done));
    return calls;
  }

  /** Marks every pruned weight written (the workers wrote them) and finalizes the output. */
  async finish(): Promise<Buffer> {
    for (const name of this.rewritten) this.writer.markWritten(name);
    await this.writer.finalize();
    return readFileSync(join(this.spec.out, "model.onnx.data"));
  }

  async close(): Promise<void> {
    await this.writer.abort().catch(() => {});
    await this.data.close();
    for (const c of this.clients.values()) c.close();
  }
}

/** Contiguous near-equal shards of `blocks` blocks over `k` workers. */
export function split(blocks: number, k: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < k; i++) out.push([Math.floor((i * blocks) / k), Math.floor(((i + 1) * blocks) / k)]);
  return out;
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<T>((_, reject) => { t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms); }),
  ]);
}
