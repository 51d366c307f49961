/**
 * Following a cluster job to its end: WatchJob replays the job's history and then streams live
 * events; this re-attaches after a coordinator restart (skipping the replayed events already
 * shown), shows progress (a bar on a terminal, JSON lines otherwise, or nothing for --wait),
 * and turns the terminal state into an exit code: 0 only for SUCCEEDED.
 */
import * as grpc from "@grpc/grpc-js";
import { toJson } from "@bufbuild/protobuf";
import { JobSpecSchema, JobState, type Job, type JobEvent } from "../../gen/atvprune/v1/job_pb.js";
import { hasStatus } from "../../rpc/index.js";
import { CliError } from "./cliError.js";
import { isTerminal, rpc, rpcFailure, stateName, type JobConnection } from "./jobClient.js";

export interface JobView {
  event(e: JobEvent): void;
  done(): void;
}

/** A job as plain JSON (`atvp status --json`, `cancel --json`). */
export function jobJson(job: Job): Record<string, unknown> {
  return {
    id: job.id,
    state: stateName(job.state),
    reason: job.reason,
    blocksDone: job.blocksDone,
    blocksTotal: job.blocksTotal,
    stages: job.stages,
    replicas: job.replicas,
    shards: job.shards.map((s) => ({ index: s.index, stage: s.stage, replica: s.replica, firstBlock: s.firstBlock, endBlock: s.endBlock, worker: s.worker, blocksDone: s.blocksDone, attempts: s.attempts })),
    spec: job.spec ? toJson(JobSpecSchema, job.spec) : null,
    createdUnixMs: Number(job.createdUnixMs),
    updatedUnixMs: Number(job.updatedUnixMs),
  };
}

export function formatJob(job: Job): string {
  const lines = [`${job.id} ${stateName(job.state)} ${job.blocksDone}/${job.blocksTotal} blocks`];
  if (job.reason) lines.push(`  reason: ${job.reason}`);
  if (job.stages > 0) lines.push(`  grid: ${job.stages} stage(s) x ${job.replicas} replica(s)`);
  for (const s of job.shards) {
    const replica = job.replicas > 1 ? `, replica ${s.replica} of stage ${s.stage}` : "";
    lines.push(`  shard ${s.index}: blocks [${s.firstBlock}, ${s.endBlock})${replica} on ${s.worker || "(unassigned)"}, ${s.blocksDone} done, ${s.attempts} attempt(s)`);
  }
  return lines.join("\n");
}

/** One event as a JSON line, in the style of `atvp prune`'s events. */
export function eventJson(e: JobEvent): Record<string, unknown> {
  const base = { jobId: e.jobId, timeUnixMs: Number(e.timeUnixMs) };
  switch (e.event.case) {
    case "stateChanged":
      return { type: "state_changed", ...base, state: stateName(e.event.value.state), reason: e.event.value.reason };
    case "shardAssigned": {
      const v = e.event.value;
      return { type: "shard_assigned", ...base, shard: v.shard, stage: v.stage, replica: v.replica, firstBlock: v.firstBlock, endBlock: v.endBlock, worker: v.worker, attempt: v.attempt };
    }
    case "gridPlanned": {
      const v = e.event.value;
      return { type: "grid_planned", ...base, stages: v.stages, replicas: v.replicas, samples: v.samples };
    }
    case "blockStarted": {
      const v = e.event.value;
      return { type: "block_started", ...base, block: v.block, label: v.label, worker: v.worker };
    }
    case "blockFinished": {
      const v = e.event.value;
      return {
        type: "block_finished", ...base, block: v.block, label: v.label, worker: v.worker, seconds: v.seconds,
        tokensPerSecond: v.tokensPerSecond, cosDistAvg: v.cosDistAvg ?? null, k: [...v.k], pruned: Number(v.pruned), params: Number(v.params),
      };
    }
    case "shardFailed": {
      const v = e.event.value;
      return { type: "shard_failed", ...base, shard: v.shard, worker: v.worker, attempt: v.attempt, cause: v.cause, reason: v.reason };
    }
    case "shardReassigned": {
      const v = e.event.value;
      return { type: "shard_reassigned", ...base, shard: v.shard, fromWorker: v.fromWorker, toWorker: v.toWorker, attempt: v.attempt, cause: v.cause };
    }
    case "blockAborted": {
      const v = e.event.value;
      return { type: "block_aborted", ...base, block: v.block, label: v.label, worker: v.worker, reason: v.reason };
    }
    default:
      return { type: "unknown", ...base };
  }
}

export const quietView: JobView = { event: () => {}, done: () => {} };

export function jsonLinesView(out: NodeJS.WritableStream): JobView {
  return { event: (e) => out.write(JSON.stringify(eventJson(e)) + "\n"), done: () => {} };
}

/** A one-line bar redrawn in place: blocks finished out of the job's total, state, last block. */
export function barView(stream: NodeJS.WriteStream, blocksTotal: number): JobView {
  let total = blocksTotal;
  const finished = new Set<number>();
  let state = "";
  let label = "";
  const width = 30;
  const draw = () => {
    const filled = total === 0 ? 0 : Math.min(width, Math.round((finished.size / total) * width));
    const cols = (stream.columns || 81) - 1;
    // Cut to the terminal width: a wrapped line would not be redrawn in place by \r.
    stream.write(`\r${`[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${finished.size}/${total || "?"} blocks ${state} ${label}`.slice(0, cols).padEnd(cols)}`);
  };
  return {
    event(e) {
      const ev = e.event;
      if (ev.case === "stateChanged") state = stateName(ev.value.state);
      if (ev.case === "shardAssigned") total = Math.max(total, ev.value.endBlock);
      if (ev.case === "blockStarted") label = `${ev.value.label} on ${ev.value.worker}`;
      if (ev.case === "shardFailed") label = `shard ${ev.value.shard} ${ev.value.cause} on ${ev.value.worker}`;
      if (ev.case === "shardReassigned") label = `shard ${ev.value.shard} ${ev.value.cause}: moved to ${ev.value.toWorker}`;
      if (ev.case === "blockFinished") {
        // A block redone after a worker failure counts once.
        finished.add(ev.value.block);
        label = `${ev.value.label} ${ev.value.seconds.toFixed(2)}s${ev.value.cosDistAvg === undefined ? "" : ` cosDist ${ev.value.cosDistAvg.toFixed(4)}`}`;
      }
      draw();
    },
    done: () => stream.write("\n"),
  };
}

/** The view for `watch` and `submit --watch`: a bar when stderr is a terminal, JSON lines on stdout otherwise. */
export async function liveView(conn: JobConnection, id: string): Promise<JobView> {
  if (!process.stderr.isTTY) return jsonLinesView(process.stdout);
  const job = await rpc(conn, `GetJob ${id}`, () => conn.client.getJob({ id }, conn.call()));
  return barView(process.stderr, job.blocksTotal);
}

export interface FollowOptions {
  /** how long to keep re-attaching while the coordinator is unreachable */
  reconnectMs?: number;
}

/** Streams the job's events into `view` until it ends; returns its terminal state and reason. */
export async function followJob(conn: JobConnection, id: string, view: JobView, opts: FollowOptions = {}): Promise<{ state: JobState; reason: string }> {
  const reconnectMs = opts.reconnectMs ?? 60_000;
  let shown = 0;
  // Only a coordinator that has answered once is waited for: a wrong address fails at once.
  let attached = false;
  let giveUpAt = Date.now() + reconnectMs;
  let end: { state: JobState; reason: string } | undefined;
  while (!end) {
    const stream = conn.client.watchJob({ id }, conn.call(true));
    let index = 0;
    try {
      for await (const e of stream) {
        index += 1;
        attached = true;
        giveUpAt = Date.now() + reconnectMs;
        // After a re-attach the coordinator replays the history: skip what was shown.
        if (index <= shown) continue;
        shown = index;
        view.event(e);
        if (e.event.case === "stateChanged" && isTerminal(e.event.value.state)) {
          end = { state: e.event.value.state, reason: e.event.value.reason };
          // Leaving the loop destroys the stream; the channel closes with the connection.
          // (Not stream.cancel(): the adapter's cancel currently calls itself.)
          break;
        }
      }
      if (!end) break;
    } catch (err) {
      if (attached && hasStatus(err, grpc.status.UNAVAILABLE) && Date.now() < giveUpAt) {
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      throw rpcFailure(err, conn, `WatchJob ${id}`);
    }
  }
  if (end && (end.reason || end.state === JobState.SUCCEEDED)) return end;
  // The stream ended without a terminal event (or without its reason): the job record decides.
  const job = await rpc(conn, `GetJob ${id}`, () => conn.client.getJob({ id }, conn.call()));
  if (!end) {
    if (!isTerminal(job.state)) {
      throw new CliError("WATCH", `the event stream of job ${id} ended while it is ${stateName(job.state)}; run atvp watch ${id} to follow it again`);
    }
    end = { state: job.state, reason: job.reason };
  }
  if (!end.reason) end.reason = job.reason;
  return end;
}

/** Follows the job, reports its end on stderr, and gives the exit code (0 only for SUCCEEDED). */
export async function followToExit(conn: JobConnection, id: string, view: JobView): Promise<number> {
  let result: { state: JobState; reason: string };
  try {
    result = await followJob(conn, id, view);
  } finally {
    view.done();
  }
  if (result.state === JobState.SUCCEEDED) {
    process.stderr.write(`job ${id} SUCCEEDED\n`);
    return 0;
  }
  process.stderr.write(`job ${id} ${stateName(result.state)}: ${result.reason || "(no reason given)"}\n`);
  return 1;
}
