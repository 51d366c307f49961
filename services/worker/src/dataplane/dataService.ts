/**
 * The gRPC handler of the worker's data plane (WorkerDataService): PullStates serves the
 * boundary states entering a block, from the outbox of the shard producing them (while it runs)
 * or from the job's work dir. It knows the control plane's runs only through ShardDirectory.
 * PullExchange serves the records the replicas running here published (exchangeRegistry.ts).
 */
import { status } from "@grpc/grpc-js";
import type { WorkerDataService } from "../../../gen/atvprune/v1/worker_data_pb.js";
import { type ServerImpl, RpcError } from "../../../rpc/index.js";
import { exists, WorkDir, type ReplicaView } from "../checkpoint/checkpoints.js";
import { StateFileReader } from "../checkpoint/stateFile.js";
import { checkCaller, type CallerPolicy } from "../callerCheck.js";
import type { OutboxRegistry } from "./outbox.js";
import { ExchangeRegistry, serveExchange } from "./exchangeRegistry.js";
import { sendStates, type SampleFeed } from "./stateStream.js";

/** What the data plane needs to know of the shards running here. */
export interface ShardDirectory {
  /** the work dir of a job that ran (or runs) a shard here */
  workDir(jobId: string): string | undefined;
  /** a running shard (of replica `replica`) whose last block produces the states entering `block`, and when it ends */
  producer(jobId: string, block: number, replica: number): { finished: Promise<void> } | undefined;
  /** resolves when the next shard is added, or when the signal aborts */
  nextAdd(signal: AbortSignal): Promise<void>;
}

export function dataServiceImpl(
  shards: ShardDirectory, outboxes: OutboxRegistry, onServed: (bytes: number) => void, producerWaitMs = PRODUCER_WAIT_MS, access: CallerPolicy = {},
  exchanges = new ExchangeRegistry(),
): ServerImpl<typeof WorkerDataService> {
  return {
    async pullStates(req, call) {
      checkCaller(call, access);
      const stop = new AbortController();
      call.on("cancelled", () => stop.abort());
      const feed = await feedFor(req.jobId, req.block, { replica: req.replica, replicas: Math.max(1, req.replicas) }, shards, outboxes, stop.signal, producerWaitMs);
      try {
        if (req.fromSample > feed.count) throw new RpcError(status.OUT_OF_RANGE, `job ${req.jobId} block ${req.block} has ${feed.count} samples; asked from ${req.fromSample}`);
        await sendStates(call, feed, req.fromSample, onServed);
      } finally {
        await feed.close?.();
        stop.abort();
      }
    },

    async pullExchange(req, call) {
      checkCaller(call, access);
      const stop = new AbortController();
      call.on("cancelled", () => stop.abort());
      try {
        await serveExchange(req, call, exchanges, stop.signal);
      } finally {
        stop.abort();
      }
    },
  };
}

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
  jobId: string, block: number, view: ReplicaView, shards: ShardDirectory, outboxes: OutboxRegistry, signal: AbortSignal, producerWaitMs: number,
): Promise<SampleFeed & { close?: () => Promise<void> }> {
  const deadline = Date.now() + producerWaitMs;
  for (;;) {
    const listen = new AbortController();
    const onAbort = () => listen.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const changed = Promise.race([outboxes.nextChange(listen.signal), shards.nextAdd(listen.signal)]);
    try {
      const box = outboxes.find(jobId, block, view.replica);
      if (box) return box;
      const dir = shards.workDir(jobId);
      const path = dir ? new WorkDir(dir, view).statesPath(block) : undefined;
      if (path && (await exists(path))) {
        const reader = await StateFileReader.open(path);
        return { count: reader.count, samples: (from) => reader.samples(from), close: () => reader.close() };
      }
      const producer = shards.producer(jobId, block, view.replica);
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
