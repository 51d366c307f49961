/**
 * The server side of the replica exchange: the records the replicas running on this worker have
 * published, by (job, block, topic, replica), and PullExchange, which serves them to the peers.
 * Only the last few blocks each replica published stay in memory; older ones are served from
 * their files in the job's work dir (every record is written there before it is published).
 */
import { status, type ServerWritableStream } from "@grpc/grpc-js";
import type { ExchangeRecord, PullExchangeRequest } from "../../../gen/atvprune/v1/worker_data_pb.js";
import { RpcError, writeMessage } from "../../../rpc/index.js";
import { InvalidArgumentError } from "../../../core/src/index.js";
import { exists } from "../checkpoint/checkpoints.js";
import { ChangeSignal } from "./changeSignal.js";
import { checkTopic, exchangePath, readExchangeFile } from "./exchangeFile.js";
import { recordMessages, type ReplicaRecords } from "./exchangeWire.js";

/** Blocks per (job, replica) whose records stay in memory. */
export const EXCHANGE_BLOCKS_IN_MEMORY = 3;

interface JobExchanges {
  workDir: string;
  /** by `${replica} ${block} ${topic}` */
  published: Map<string, ReplicaRecords>;
  /** per replica, the blocks in memory, least recently published first */
  recent: Map<number, number[]>;
}

/** One per worker instance, never global. */
export class ExchangeRegistry {
  private readonly jobs = new Map<string, JobExchanges>();
  private readonly changes = new ChangeSignal();

  constructor(private readonly blocksInMemory = EXCHANGE_BLOCKS_IN_MEMORY) {}

  /** Makes the job known here (PullExchange answers NOT_FOUND before) and where its files are. */
  openJob(jobId: string, workDir: string): void {
    const job = this.jobs.get(jobId);
    if (job) {
      if (job.workDir !== workDir) throw new InvalidArgumentError("workDir", `job ${jobId} exchanges in ${job.workDir} on this worker, not ${workDir}`);
      return;
    }
    this.jobs.set(jobId, { workDir, published: new Map(), recent: new Map() });
    this.changes.notify();
  }

  /** Drops the job's records; its pulls answer NOT_FOUND from now on. */
  forgetJob(jobId: string): void {
    if (this.jobs.delete(jobId)) this.changes.notify();
  }

  workDir(jobId: string): string | undefined {
    return this.jobs.get(jobId)?.workDir;
  }

  publish(jobId: string, block: number, topic: string, replica: number, data: ReplicaRecords): void {
    const job = this.jobs.get(jobId);
    if (!job) throw new InvalidArgumentError("jobId", `job ${jobId} is not open for exchange on this worker`);
    job.published.set(keyOf(replica, block, topic), data);
    const blocks = (job.recent.get(replica) ?? []).filter((b) => b !== block);
    blocks.push(block);
    while (blocks.length > this.blocksInMemory) {
      const old = blocks.shift()!;
      for (const key of [...job.published.keys()]) if (key.startsWith(`${replica} ${old} `)) job.published.delete(key);
    }
    job.recent.set(replica, blocks);
    this.changes.notify();
  }

  /** Published records still in memory. */
  find(jobId: string, block: number, topic: string, replica: number): ReplicaRecords | undefined {
    return this.jobs.get(jobId)?.published.get(keyOf(replica, block, topic));
  }

  /** Resolves at the next open, forget or publish, or when the signal aborts. */
  nextChange(signal: AbortSignal): Promise<void> {
    return this.changes.next(signal);
  }
}

function keyOf(replica: number, block: number, topic: string): string {
  return `${replica} ${block} ${topic}`;
}

/**
 * PullExchange: the replica's records once published here or written to the work dir. A peer
 * may ask before the replica got there (it runs ahead): the call waits, until the caller
 * cancels it (its signal).
 */
export async function serveExchange(
  req: PullExchangeRequest, call: ServerWritableStream<unknown, ExchangeRecord>, registry: ExchangeRegistry, signal: AbortSignal,
): Promise<void> {
  try {
    checkTopic(req.topic);
  } catch (err) {
    throw new RpcError(status.INVALID_ARGUMENT, `topic: ${(err as Error).message}`);
  }
  const data = await recordsFor(req, registry, signal);
  for (const [i, record] of data.records.entries()) {
    for (const m of recordMessages(data.first + i, record)) await writeMessage(call, m);
  }
}

async function recordsFor(req: PullExchangeRequest, registry: ExchangeRegistry, signal: AbortSignal): Promise<ReplicaRecords> {
  for (;;) {
    const listen = new AbortController();
    const onAbort = () => listen.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    // Listening before looking: a publish between the two is not missed.
    const changed = registry.nextChange(listen.signal);
    try {
      const workDir = registry.workDir(req.jobId);
      if (workDir === undefined) throw new RpcError(status.NOT_FOUND, `job_id: job ${req.jobId} exchanges nothing on this worker (not started here yet, or over)`);
      const published = registry.find(req.jobId, req.block, req.topic, req.replica);
      if (published) return published;
      const path = exchangePath(workDir, req.block, req.topic, req.replica);
      if (await exists(path)) return await readExchangeFile(path);
      await changed;
      if (signal.aborted) throw new RpcError(status.CANCELLED, "the client cancelled the stream");
    } finally {
      signal.removeEventListener("abort", onAbort);
      listen.abort();
    }
  }
}

