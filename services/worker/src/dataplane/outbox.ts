/**
 * The states this worker serves to its downstream while its shard runs: the outputs of its last
 * block, sample by sample as each is computed, so the next worker starts before this block ends.
 * Once the shard is done the same states are in states/input-<end>.bin and the outbox goes away.
 */
import type { SampleState, StateSource } from "../../../core/src/index.js";
import type { SampleFeed } from "./stateStream.js";
import { ChangeSignal } from "./changeSignal.js";

type Waiter = { resolve: (s: SampleState) => void; reject: (e: unknown) => void };

export class Outbox implements StateSource, SampleFeed {
  private readonly states: SampleState[] = [];
  private readonly waiters = new Map<number, Waiter[]>();
  private failure: unknown;

  constructor(readonly jobId: string, readonly block: number, readonly count: number, readonly replica = 0) {}

  /** Samples must be put in order 0..count-1. */
  put(sample: number, state: SampleState): void {
    if (sample !== this.states.length) throw new Error(`outbox of job ${this.jobId} block ${this.block}: got sample ${sample}, expected ${this.states.length}`);
    this.states.push(state);
    for (const w of this.waiters.get(sample) ?? []) w.resolve(state);
    this.waiters.delete(sample);
  }

  /** The shard stopped: everyone waiting (and later) gets `err`. */
  fail(err: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    for (const list of this.waiters.values()) for (const w of list) w.reject(err);
    this.waiters.clear();
  }

  get ready(): number {
    return this.states.length;
  }

  get(sample: number): Promise<SampleState> {
    const s = this.states[sample];
    if (s) return Promise.resolve(s);
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (sample < 0 || sample >= this.count) return Promise.reject(new RangeError(`job ${this.jobId} block ${this.block} has no sample ${sample}`));
    return new Promise((resolve, reject) => {
      let list = this.waiters.get(sample);
      if (!list) this.waiters.set(sample, (list = []));
      list.push({ resolve, reject });
    });
  }

  async *samples(from: number): AsyncGenerator<[number, SampleState]> {
    for (let j = from; j < this.count; j++) yield [j, await this.get(j)];
  }
}

/** This worker's outboxes by (job, block). One per worker instance, never global. */
export class OutboxRegistry {
  private readonly boxes = new Map<string, Outbox>();
  private readonly changes = new ChangeSignal();

  open(jobId: string, block: number, count: number, replica = 0): Outbox {
    const key = keyOf(jobId, block, replica);
    this.boxes.get(key)?.fail(new Error(`job ${jobId} block ${block}: superseded by a newer run`));
    const box = new Outbox(jobId, block, count, replica);
    this.boxes.set(key, box);
    this.changes.notify();
    return box;
  }

  find(jobId: string, block: number, replica = 0): Outbox | undefined {
    return this.boxes.get(keyOf(jobId, block, replica));
  }

  /** Removes the outbox if it is still the registered one (streams already serving it go on). */
  remove(box: Outbox): void {
    const key = keyOf(box.jobId, box.block, box.replica);
    if (this.boxes.get(key) === box) this.boxes.delete(key);
    this.changes.notify();
  }

  /** Resolves at the next open or remove, or when the signal aborts. */
  nextChange(signal?: AbortSignal): Promise<void> {
    return this.changes.next(signal);
  }
}

function keyOf(jobId: string, block: number, replica: number): string {
  return `${jobId}\u0000${block}\u0000${replica}`;
}
