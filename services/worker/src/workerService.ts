/**
 * The gRPC handlers of WorkerService. They hold no pruning logic: RunShard starts a ShardRun and
 * forwards its progress, CancelShard and UpdateUpstream reach a running one, PullStates serves
 * boundary states from an outbox (while the producing shard runs) or from the work dir, and
 * FinalizeOutput completes a job's output once all its shards are done.
 */
import { create } from "@bufbuild/protobuf";
import { status, type Metadata } from "@grpc/grpc-js";
import { ShardProgressSchema, type WorkerService } from "../../gen/atvprune/v1/worker_pb.js";
import type { ServerImpl } from "../../rpc/grpcAdapter.js";
import { writeMessage } from "../../rpc/grpcAdapter.js";
import { RpcError } from "../../rpc/status.js";
import { requireBearer } from "../../rpc/bearerAuth.js";
import { requirePeerName } from "../../rpc/peerNames.js";
import type { PeerCertificate } from "node:tls";
import { confineAssignment, confinePlan, type AssignmentPolicy } from "./assignmentPolicy.js";
import { inShard } from "./errors.js";
import { finalizeOutput } from "./outputFinalizer.js";
import { fromPlanMessage } from "../../rpc/jobPlanWire.js";
import { exists, WorkDir } from "./checkpoints.js";
import type { OutboxRegistry } from "./outbox.js";
import { ShardRun, type ShardRunDeps } from "./shardRunner.js";
import { StateFileReader } from "./stateFile.js";
import { sendStates, type SampleFeed } from "./stateStream.js";

export interface WorkerIdentity {
  id: string;
  address: string;
  device: string;
  memoryBytes: number;
  threads: number;
}

/** The shards running on this worker and where each job's work dir is. */
export class ShardTable {
  private readonly runs = new Map<string, { run: ShardRun; finished: Promise<void> }>();
  /** job id -> work dir, remembered after its shards end so PullStates can serve the files */
  private readonly workDirs = new Map<string, string>();
  private readonly listeners = new Set<() => void>();

  get(jobId: string, shard: number) {
    return this.runs.get(key(jobId, shard));
  }

  add(run: ShardRun, finished: Promise<void>): void {
    this.runs.set(key(run.jobId, run.shard), { run, finished });
    this.workDirs.set(run.jobId, run.workDir);
    for (const l of [...this.listeners]) l();
  }

  /** Resolves when the next shard is added, or when the signal aborts. */
  nextAdd(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.listeners.delete(done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      this.listeners.add(done);
      signal.addEventListener("abort", done, { once: true });
    });
  }

  delete(run: ShardRun): void {
    const k = key(run.jobId, run.shard);
    if (this.runs.get(k)?.run === run) this.runs.delete(k);
  }

  all(): ShardRun[] {
    return [...this.runs.values()].map((r) => r.run);
  }

  finishedAll(): Promise<unknown> {
    return Promise.allSettled([...this.runs.values()].map((r) => r.finished));
  }

  workDir(jobId: string): string | undefined {
    return this.workDirs.get(jobId);
  }

  /** The running shard whose last block produces the states entering `block`. */
  producer(jobId: string, block: number): { run: ShardRun; finished: Promise<void> } | undefined {
    return [...this.runs.values()].find((r) => r.run.jobId === jobId && r.run.endBlock === block);
  }
}

function key(jobId: string, shard: number): string {
  return `${jobId}\u0000${shard}`;
}

/** Who may call, and which paths an assignment may name. */
export interface WorkerAccess {
  /** shared token every call must carry (undefined: none asked) */
  token?: string;
  /** names (CN or DNS SAN) a caller's client certificate must answer to (undefined: any from the CA) */
  clientNames?: string[];
  /** undefined: paths are not confined (embedded use: tests, benchmarks) */
  policy?: AssignmentPolicy;
}

export function workerServiceImpl(
  me: WorkerIdentity, shards: ShardTable, outboxes: OutboxRegistry, deps: ShardRunDeps, producerWaitMs = PRODUCER_WAIT_MS, access: WorkerAccess = {},
): ServerImpl<typeof WorkerService> {
  const auth = (call: { metadata: Metadata; getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }) => {
    requirePeerName(call, access.clientNames);
    requireBearer(call, access.token);
  };
  return {
    async getInfo(_req, call) {
      auth(call);
      const jobs = [...new Set(shards.all().map((r) => r.jobId))];
      return { id: me.id, address: me.address, device: me.device, memoryBytes: BigInt(me.memoryBytes), threads: me.threads, runningJobs: jobs };
    },

    async runShard(assigned, call) {
      auth(call);
      // Checked before anything runs: a refused assignment supersedes no running attempt.
      const req = access.policy ? confineAssignment(assigned, access.policy) : assigned;
      const previous = shards.get(req.jobId, req.shard);
      if (previous) {
        // A new attempt of a shard still running here (the coordinator lost its stream): the
        // old run stops and the new one resumes from the checkpoints it left.
        previous.run.cancel(new RpcError(status.ABORTED, `job ${req.jobId} shard ${req.shard}: superseded by attempt ${req.attempt}`));
        await previous.finished.catch(() => {});
      }
      const run = new ShardRun(req, deps);
      let ended!: () => void;
      shards.add(run, new Promise<void>((resolve) => (ended = resolve)));
      const onCancelled = () => run.cancel(new RpcError(status.CANCELLED, `${run.subject}: the coordinator closed the stream`));
      call.on("cancelled", onCancelled);
      try {
        await run.run((p) => writeMessage(call, create(ShardProgressSchema, p)));
      } finally {
        call.off("cancelled", onCancelled);
        shards.delete(run);
        ended();
      }
    },

    async cancelShard(req, call) {
      auth(call);
      const r = shards.get(req.jobId, req.shard);
      r?.run.cancel();
      // Answered once the run has stopped (bounded): after that the coordinator may remove the
      // job's work folder without this run writing into it again.
      if (r) await Promise.race([r.finished, new Promise((resolve) => setTimeout(resolve, CANCEL_WAIT_MS).unref())]);
      return { cancelled: r !== undefined };
    },

    async updateUpstream(req, call) {
      auth(call);
      const r = shards.get(req.jobId, req.shard);
      if (!r) throw new RpcError(status.NOT_FOUND, `job ${req.jobId} shard ${req.shard} is not running on worker ${me.id}`);
      r.run.setUpstream(req.upstream);
      return {};
    },

    async finalizeOutput(req, call) {
      auth(call);
      const plan = access.policy ? confinePlan(req.plan, access.policy) : req.plan;
      try {
        await finalizeOutput(fromPlanMessage(plan));
      } catch (err) {
        throw inShard(err, `job ${req.jobId} output`);
      }
      return {};
    },

    async pullStates(req, call) {
      auth(call);
      const stop = new AbortController();
      call.on("cancelled", () => stop.abort());
      const feed = await feedFor(req.jobId, req.block, shards, outboxes, stop.signal, producerWaitMs);
      try {
        if (req.fromSample > feed.count) throw new RpcError(status.OUT_OF_RANGE, `job ${req.jobId} block ${req.block} has ${feed.count} samples; asked from ${req.fromSample}`);
        await sendStates(call, feed, req.fromSample, (n) => deps.metrics.activationBytes.inc({ direction: "served" }, n));
      } finally {
        await feed.close?.();
        stop.abort();
      }
    },
  };
}

/** How long CancelShard waits for the run to stop before it answers. */
const CANCEL_WAIT_MS = 10_000;

/** How long PullStates waits, by default, for the shard producing the states to be assigned here. */
export const PRODUCER_WAIT_MS = 3000;

/**
 * Where the states entering `block` come from: the outbox of the shard producing them, or the
 * work dir once that shard is done. A shard that will produce them but has not opened its
 * outbox yet (it is still loading) is waited for, and so, for a few seconds, is its assignment
 * (a downstream often asks before its upstream got its shard); then it is UNAVAILABLE for now,
 * and the puller retries.
 */
async function feedFor(
  jobId: string, block: number, shards: ShardTable, outboxes: OutboxRegistry, signal: AbortSignal, producerWaitMs: number,
): Promise<SampleFeed & { close?: () => Promise<void> }> {
  const deadline = Date.now() + producerWaitMs;
  for (;;) {
    const listen = new AbortController();
    const onAbort = () => listen.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const changed = Promise.race([outboxes.nextChange(listen.signal), shards.nextAdd(listen.signal)]);
    try {
      const box = outboxes.find(jobId, block);
      if (box) return box;
      const dir = shards.workDir(jobId);
      const path = dir ? new WorkDir(dir).statesPath(block) : undefined;
      if (path && (await exists(path))) {
        const reader = await StateFileReader.open(path);
        return { count: reader.count, samples: (from) => reader.samples(from), close: () => reader.close() };
      }
      const producer = shards.producer(jobId, block);
      const wait = deadline - Date.now();
      if (!producer && wait <= 0) throw new RpcError(status.UNAVAILABLE, `job ${jobId}: the states entering block ${block} are not on this worker (not produced here, or not yet)`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, Math.max(wait, 0))));
      await Promise.race(producer ? [changed, producer.finished] : [changed, timeout]);
      clearTimeout(timer);
      if (signal.aborted) throw new RpcError(status.CANCELLED, "the client cancelled the stream");
    } finally {
      signal.removeEventListener("abort", onAbort);
      listen.abort();
    }
  }
}
