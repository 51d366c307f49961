/**
 * Job events on a JetStream stream, one subject per job (atvp.jobs.<id>.events), so that a watch
 * can replay a job's whole history and then follow it live, from any coordinator replica.
 *
 * Publishing never blocks the pipeline on NATS (DESIGN §5): events go into an in-order queue
 * that a background sender drains with acknowledged publishes; while NATS is unreachable they
 * wait there and go out, in order, when it is back. Each carries a message id, so a publish whose
 * ack was lost and is sent again is dropped by the stream's de-duplication instead of doubled.
 */
import { clone, fromBinary, toBinary } from "@bufbuild/protobuf";
import { nuid, type NatsConnection } from "@nats-io/transport-node";
import {
  DeliverPolicy, jetstream, jetstreamManager, JetStreamApiCodes, JetStreamApiError, StorageType,
  type ConsumerMessages, type JetStreamClient, type JetStreamManager, type OrderedConsumerOptions,
} from "@nats-io/jetstream";
import { JobEventSchema, JobState, type JobEvent } from "../../../gen/atvprune/v1/job_pb.js";
import { ConnectionWatch, isUnavailable, retryDelay } from "./natsConnection.js";
import { checkJobId } from "./jobStore.js";
import { StateError, StateUnavailableError } from "./errors.js";

export interface EventLogOptions {
  /** stream name (default "ATVP_EVENTS") */
  stream?: string;
  /** per-publish ack timeout (default 2000 ms) */
  timeoutMs?: number;
  /** window in which the stream drops a re-sent message id (default 2 minutes) */
  duplicateWindowMs?: number;
  /** failures that are not outages: an event that cannot be published or decoded */
  onError?: (err: StateError) => void;
}

export interface WatchOptions {
  signal?: AbortSignal;
}

const SUBJECTS = "atvp.jobs.*.events";

export function eventSubject(jobId: string): string {
  return `atvp.jobs.${jobId}.events`;
}

const TERMINAL = new Set([JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED]);

/** The event that closes a job's history: after it, a watch ends. */
export function isTerminalEvent(event: JobEvent): boolean {
  return event.event.case === "stateChanged" && TERMINAL.has(event.event.value.state);
}

interface Outgoing {
  event: JobEvent;
  subject: string;
  msgID: string;
}

export class EventLog {
  readonly stream: string;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #conn: ConnectionWatch;
  readonly #timeoutMs: number;
  readonly #duplicateWindowMs: number;
  readonly #onError: (err: StateError) => void;
  /** Tells this log's message ids apart from those of earlier coordinator runs (same job, same seq). */
  readonly #instance = nuid.next();
  readonly #seqByJob = new Map<string, number>();
  readonly #queue: Outgoing[] = [];
  readonly #closing = new AbortController();
  #sender: Promise<void> | undefined;
  #flushWaiters: Array<() => void> = [];

  private constructor(stream: string, js: JetStreamClient, jsm: JetStreamManager, conn: ConnectionWatch, opts: EventLogOptions) {
    this.stream = stream;
    this.#js = js;
    this.#jsm = jsm;
    this.#conn = conn;
    this.#timeoutMs = opts.timeoutMs ?? 2000;
    this.#duplicateWindowMs = opts.duplicateWindowMs ?? 120_000;
    this.#onError = opts.onError ?? (() => {});
  }

  /** Opens the stream, creating it if missing; needs NATS to be reachable. */
  static async open(nc: NatsConnection, opts: EventLogOptions = {}): Promise<EventLog> {
    const stream = opts.stream ?? "ATVP_EVENTS";
    const timeout = opts.timeoutMs ?? 2000;
    try {
      const jsm = await jetstreamManager(nc, { timeout });
      const log = new EventLog(stream, jetstream(nc, { timeout }), jsm, new ConnectionWatch(nc), opts);
      await log.#ensureStream();
      return log;
    } catch (err) {
      throw new StateUnavailableError(`stream ${stream}`, `cannot open the event stream (${(err as Error).message})`, { cause: err });
    }
  }

  async #ensureStream(): Promise<void> {
    try {
      await this.#jsm.streams.info(this.stream);
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
      await this.#jsm.streams.add({
        name: this.stream,
        subjects: [SUBJECTS],
        storage: StorageType.File,
        duplicate_window: this.#duplicateWindowMs * 1_000_000,
      });
    }
  }

  /** Queues the event behind all earlier ones; it reaches the stream as soon as NATS allows. */
  publish(event: JobEvent): void {
    checkJobId(event.jobId);
    if (this.#closing.signal.aborted) throw new StateUnavailableError(`stream ${this.stream}`, "event log is closed");
    const seq = (this.#seqByJob.get(event.jobId) ?? 0) + 1;
    this.#seqByJob.set(event.jobId, seq);
    this.#queue.push({
      event: clone(JobEventSchema, event),
      subject: eventSubject(event.jobId),
      msgID: `${event.jobId}-${this.#instance}-${seq}`,
    });
    this.#kick();
  }

  /** Events queued but not yet acknowledged by the stream (all jobs, or one), oldest first. */
  pending(jobId?: string): JobEvent[] {
    return this.#queue.filter((o) => jobId === undefined || o.event.jobId === jobId).map((o) => clone(JobEventSchema, o.event));
  }

  /** Resolves once every queued event is acknowledged; StateUnavailableError after timeoutMs. */
  flushed(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timeoutMs = opts.timeoutMs ?? 30_000;
      const timer = setTimeout(() => {
        this.#flushWaiters = this.#flushWaiters.filter((w) => w !== done);
        reject(new StateUnavailableError(`stream ${this.stream}`, `${this.#queue.length} events not acknowledged after ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#flushWaiters.push(done);
    });
  }

  #kick(): void {
    if (this.#sender || this.#closing.signal.aborted) return;
    this.#sender = this.#send().finally(() => {
      this.#sender = undefined;
      if (this.#queue.length > 0 && !this.#closing.signal.aborted) this.#kick();
    });
  }

  /** One publish in flight at a time: that is what keeps a job's events in order across retries. */
  async #send(): Promise<void> {
    let attempt = 0;
    let reconnects = this.#conn.reconnects;
    while (this.#queue.length > 0 && !this.#closing.signal.aborted) {
      if (reconnects !== this.#conn.reconnects) {
        reconnects = this.#conn.reconnects;
        attempt = 0;
      }
      const next = this.#queue[0]!;
      if (this.#conn.up) {
        try {
          await this.#js.publish(next.subject, toBinary(JobEventSchema, next.event), {
            msgID: next.msgID,
            timeout: this.#timeoutMs,
          });
          this.#queue.shift();
          attempt = 0;
          continue;
        } catch (err) {
          if (!isUnavailable(err)) {
            this.#onError(new StateUnavailableError(next.subject, `publishing event ${next.msgID} failed, will retry (${(err as Error).message})`, { cause: err }));
          }
          // Up but unanswered: JetStream still starting, or a NATS that came back without its
          // store, where a publish finds no stream to answer it; recreate the stream if so.
          if (this.#conn.up) await this.#ensureStream().catch(() => {});
        }
      }
      await this.#conn.pause(retryDelay(attempt++), this.#closing.signal);
    }
    if (this.#queue.length === 0) {
      const waiters = this.#flushWaiters;
      this.#flushWaiters = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Every event of the job from the first, then live ones; ends after the terminal state event,
   * when `signal` aborts, or when the log closes. Survives NATS restarts: it resumes after the
   * last stream sequence it yielded, so nothing is repeated or skipped.
   */
  async *watch(jobId: string, opts: WatchOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    checkJobId(jobId);
    const stop = opts.signal ? AbortSignal.any([opts.signal, this.#closing.signal]) : this.#closing.signal;
    const subject = eventSubject(jobId);
    let lastSeq = 0;
    let attempt = 0;
    let reconnects = this.#conn.reconnects;
    while (!stop.aborted) {
      if (reconnects !== this.#conn.reconnects) {
        reconnects = this.#conn.reconnects;
        attempt = 0;
      }
      if (!this.#conn.up) {
        // Creating a consumer now would only time out; wait for the reconnect instead.
        await this.#conn.pause(retryDelay(attempt++), stop);
        continue;
      }
      let messages: ConsumerMessages | undefined;
      const halt = () => messages?.stop();
      stop.addEventListener("abort", halt);
      // A restarted server lost this ephemeral consumer; the client would notice only after
      // missed idle heartbeats (tens of seconds): start a new one after lastSeq at once.
      const offReconnect = this.#conn.onChange(halt);
      try {
        const start: Partial<OrderedConsumerOptions> =
          lastSeq === 0
            ? { deliver_policy: DeliverPolicy.All }
            : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lastSeq + 1 };
        const consumer = await this.#js.consumers.get(this.stream, { filter_subjects: subject, ...start });
        messages = await consumer.consume({ max_messages: 256 });
        if (stop.aborted) return;
        for await (const m of messages) {
          const seq = m.info.streamSequence;
          if (seq <= lastSeq) continue;
          lastSeq = seq;
          attempt = 0;
          let event: JobEvent;
          try {
            event = fromBinary(JobEventSchema, m.data);
          } catch (err) {
            this.#onError(new StateError("DATA_LOSS", `${subject}#${seq}`, `undecodable event skipped (${(err as Error).message})`, { cause: err }));
            continue;
          }
          yield event;
          if (isTerminalEvent(event)) return;
        }
      } catch (err) {
        if (!isUnavailable(err) && !(err instanceof JetStreamApiError)) {
          this.#onError(new StateUnavailableError(subject, `watch interrupted, resuming after #${lastSeq} (${(err as Error).message})`, { cause: err }));
        }
      } finally {
        stop.removeEventListener("abort", halt);
        offReconnect();
        messages?.stop();
      }
      // The consumer gave up (NATS away for long, stream recreated): start a new one after lastSeq.
      await this.#conn.pause(retryDelay(attempt++), stop);
    }
  }

  /**
   * The job's events published so far, without waiting for live ones: what a coordinator that
   * resumes a job reads to close what its predecessor left open. StateUnavailableError when
   * NATS does not deliver them all within `timeoutMs`.
   */
  async history(jobId: string, opts: { timeoutMs?: number } = {}): Promise<JobEvent[]> {
    checkJobId(jobId);
    const subject = eventSubject(jobId);
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    const events: JobEvent[] = [];
    let left = 0;
    try {
      const consumer = await this.#js.consumers.get(this.stream, { filter_subjects: subject, deliver_policy: DeliverPolicy.All });
      left = (await consumer.info()).num_pending;
      while (left > 0 && Date.now() < deadline) {
        const batch = await consumer.fetch({ max_messages: Math.min(left, 256), expires: Math.max(1000, deadline - Date.now()) });
        let got = 0;
        for await (const m of batch) {
          got++;
          left--;
          try {
            events.push(fromBinary(JobEventSchema, m.data));
          } catch (err) {
            this.#onError(new StateError("DATA_LOSS", `${subject}#${m.info.streamSequence}`, `undecodable event skipped (${(err as Error).message})`, { cause: err }));
          }
          if (left === 0) break;
        }
        if (got === 0) break;
      }
    } catch (err) {
      throw new StateUnavailableError(subject, `cannot read the event history (${(err as Error).message})`, { cause: err });
    }
    if (left > 0) throw new StateUnavailableError(subject, `${left} events of the history not delivered in time`);
    return events;
  }

  /**
   * Ends watches and stops the sender after one last bounded try; events it could not send are
   * reported through onError. Does not close the connection.
   */
  async close(opts: { flushTimeoutMs?: number } = {}): Promise<void> {
    if (this.#closing.signal.aborted) return;
    if (this.#queue.length > 0 && this.#conn.up) {
      await this.flushed({ timeoutMs: opts.flushTimeoutMs ?? 2000 }).catch(() => {});
    }
    this.#closing.abort();
    await this.#sender;
    for (const o of this.#queue) {
      this.#onError(new StateUnavailableError(o.subject, `log closed before event ${o.msgID} reached NATS`));
    }
    this.#conn.stop();
  }
}
