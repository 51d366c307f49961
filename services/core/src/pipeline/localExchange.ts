/**
 * The all-gather between replicas that share one process (engine tests, and any caller that
 * runs several replicas in one process): records meet in memory. The cluster's replicas use the
 * worker data plane instead (services/worker/src/dataplane/replicaExchange.ts).
 */
import { replicaSamples, type ReplicaSlice, type SampleExchange, type SampleRecord } from "./sampleExchange.js";

export class LocalExchangeHub {
  private readonly posted = new Map<string, Map<number, ReadonlyMap<number, SampleRecord>>>();
  private readonly waiters = new Map<string, (() => void)[]>();

  constructor(readonly samples: number, readonly replicas: number) {
    for (let r = 0; r < replicas; r++) replicaSamples(samples, replicas, r);
  }

  member(replica: number): SampleExchange {
    const slice: ReplicaSlice = { replica, replicas: this.replicas };
    return { slice, allGather: (block, topic, own, signal) => this.allGather(`${block}\u0000${topic}`, replica, own, signal) };
  }

  private async allGather(key: string, replica: number, own: ReadonlyMap<number, SampleRecord>, signal?: AbortSignal): Promise<SampleRecord[]> {
    const { first, end } = replicaSamples(this.samples, this.replicas, replica);
    for (let j = first; j < end; j++) if (!own.has(j)) throw new RangeError(`replica ${replica} gave no record for its sample ${j}`);
    let posted = this.posted.get(key);
    if (!posted) this.posted.set(key, (posted = new Map()));
    posted.set(replica, own);
    for (const wake of this.waiters.get(key) ?? []) wake();
    this.waiters.delete(key);
    while (posted.size < this.replicas) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve) => {
        const list = this.waiters.get(key) ?? [];
        list.push(resolve);
        this.waiters.set(key, list);
        signal?.addEventListener("abort", () => resolve(), { once: true });
      });
    }
    const all: SampleRecord[] = [];
    for (let r = 0; r < this.replicas; r++) {
      const theirs = posted.get(r)!;
      const range = replicaSamples(this.samples, this.replicas, r);
      for (let j = range.first; j < range.end; j++) all.push(theirs.get(j)!);
    }
    return all;
  }
}
