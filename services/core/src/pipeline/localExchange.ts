/**
 * The all-gather between replicas that share one process (engine tests, and any caller that
 * runs several replicas in one process): records meet in memory. The cluster's replicas use the
 * worker data plane instead (services/worker/src/dataplane/replicaExchange.ts).
 */
import { ownedItems, replicaSamples, type ItemShares, type ReplicaSlice, type SampleExchange, type SampleRecord } from "./sampleExchange.js";

export class LocalExchangeHub {
  private readonly posted = new Map<string, Map<number, ReadonlyMap<number, SampleRecord>>>();
  /** records posted point to point, by key and replica */
  private readonly pointed = new Map<string, Map<number, SampleRecord>>();
  private readonly waiters = new Map<string, (() => void)[]>();

  constructor(readonly samples: number, readonly replicas: number) {
    for (let r = 0; r < replicas; r++) replicaSamples(samples, replicas, r);
  }

  member(replica: number): SampleExchange {
    const slice: ReplicaSlice = { replica, replicas: this.replicas };
    return {
      slice,
      allGather: (block, topic, own, signal, shares) => this.allGather(`${block}\u0000${topic}`, slice, own, signal, shares),
      post: async (block, topic, record) => this.post(`${block}\u0000${topic}`, replica, record),
      fetch: (block, topic, from, vectors, signal) => this.fetch(`${block}\u0000${topic}`, from, vectors, signal),
    };
  }

  private post(key: string, replica: number, record: SampleRecord): void {
    const posted = this.pointed.get(key) ?? new Map<number, SampleRecord>();
    this.pointed.set(key, posted);
    // The first post stands, as a replica's file does in the cluster.
    if (!posted.has(replica)) posted.set(replica, record);
    this.wake(key);
  }

  private async fetch(key: string, from: number, vectors: number, signal?: AbortSignal): Promise<SampleRecord> {
    if (!(Number.isInteger(from) && from >= 0 && from < this.replicas)) throw new RangeError(`replica ${from} is not one of ${this.replicas}`);
    for (;;) {
      const record = this.pointed.get(key)?.get(from);
      if (record) {
        if (record.length !== vectors) throw new RangeError(`replica ${from} posted ${record.length} vectors, not ${vectors}`);
        return record;
      }
      signal?.throwIfAborted();
      await this.waitFor(key, signal);
    }
  }

  private wake(key: string): void {
    for (const wake of this.waiters.get(key) ?? []) wake();
    this.waiters.delete(key);
  }

  private waitFor(key: string, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const list = this.waiters.get(key) ?? [];
      list.push(resolve);
      this.waiters.set(key, list);
      signal?.addEventListener("abort", () => resolve(), { once: true });
    });
  }

  private async allGather(key: string, slice: ReplicaSlice, own: ReadonlyMap<number, SampleRecord>, signal?: AbortSignal, shares?: ItemShares): Promise<SampleRecord[]> {
    const replica = slice.replica;
    const { first, end } = ownedItems(this.samples, slice, replica, shares);
    for (let j = first; j < end; j++) if (!own.has(j)) throw new RangeError(`replica ${replica} gave no record for its item ${j}`);
    let posted = this.posted.get(key);
    if (!posted) this.posted.set(key, (posted = new Map()));
    posted.set(replica, own);
    this.wake(key);
    while (posted.size < this.replicas) {
      signal?.throwIfAborted();
      await this.waitFor(key, signal);
    }
    const all: SampleRecord[] = [];
    for (let r = 0; r < this.replicas; r++) {
      const theirs = posted.get(r)!;
      const range = ownedItems(this.samples, slice, r, shares);
      for (let j = range.first; j < range.end; j++) all.push(theirs.get(j)!);
    }
    return all;
  }
}
