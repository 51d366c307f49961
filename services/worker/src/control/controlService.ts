/**
 * The gRPC handlers of the worker's control plane (WorkerService). They hold no pruning logic:
 * RunShard starts a ShardRun and forwards its progress, CancelShard and UpdateUpstream reach a
 * running one, and FinalizeOutput completes a job's output once all its shards are done.
 */
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { ShardProgressSchema, type WorkerService } from "../../../gen/atvprune/v1/worker_pb.js";
import { type ServerImpl, writeMessage, RpcError, fromPlanMessage } from "../../../rpc/index.js";
import { confineAssignment, confinePlan, type AssignmentPolicy } from "./assignmentPolicy.js";
import { inShard } from "../errors.js";
import { finalizeOutput } from "./outputFinalizer.js";
import { runProfile } from "./profileRun.js";
import { ShardRun, type ShardRunDeps } from "./shardRunner.js";
import type { ShardTable } from "./shardTable.js";
import { checkCaller, type CallerOf, type CallerPolicy } from "../callerCheck.js";

export interface WorkerIdentity {
  id: string;
  address: string;
  device: string;
  memoryBytes: number;
  threads: number;
}

/** Who may call, and which paths an assignment may name. */
export interface WorkerAccess extends CallerPolicy {
  /** undefined: paths are not confined (embedded use: tests, benchmarks) */
  policy?: AssignmentPolicy;
}

export function controlServiceImpl(me: WorkerIdentity, shards: ShardTable, deps: ShardRunDeps, access: WorkerAccess = {}): ServerImpl<typeof WorkerService> {
  const auth = (call: CallerOf) => checkCaller(call, access);
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

    async updatePeer(req, call) {
      auth(call);
      const r = shards.get(req.jobId, req.shard);
      if (!r) throw new RpcError(status.NOT_FOUND, `job ${req.jobId} shard ${req.shard} is not running on worker ${me.id}`);
      r.run.setPeer(req.replica, req.address);
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

    async runProfile(req, call) {
      auth(call);
      const plan = access.policy ? confinePlan(req.plan, access.policy) : req.plan;
      deps.log(`job ${req.jobId}: ${plan?.sparsityProfile || "profile"} pre-pass over ${plan?.blocks ?? 0} blocks`);
      try {
        const blocks = await runProfile(fromPlanMessage(plan), { threads: deps.threads, device: deps.device, warn: deps.log });
        return { blocks: blocks.map((facts) => ({ facts })) };
      } catch (err) {
        throw inShard(err, `job ${req.jobId} profile pre-pass`);
      }
    },

  };
}

/** How long CancelShard waits for the run to stop before it answers. */
const CANCEL_WAIT_MS = 10_000;

