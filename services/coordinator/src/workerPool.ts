/**
 * The coordinator's view of its workers: their addresses (static, or found through the
 * Kubernetes API), which of them answer GetInfo (ready), and one gRPC client each.
 * Readiness is polled, so a restarted worker comes back by itself. An address that discovery
 * takes away is announced ("removed"), so whoever streams from it can stop waiting at once.
 */
import type * as grpc from "@grpc/grpc-js";
import { WorkerService, type WorkerInfo } from "../../gen/atvprune/v1/worker_pb.js";
import {
  createClient, type Client, channelCredentials, channelOptions, GRPC_OPTIONS, type TlsConfig,
  bearerClientOptions,
} from "../../rpc/index.js";

export type WorkerClient = Client<typeof WorkerService>;

export interface WorkerPoolOptions {
  tls?: TlsConfig;
  /** shared token the workers ask for, sent with every call */
  token?: string;
  pollMs?: number;
  /** GetInfo deadline */
  timeoutMs?: number;
}

export class WorkerPool {
  private addresses: string[] = [];
  private readonly clients = new Map<string, WorkerClient>();
  private readonly info = new Map<string, WorkerInfo>();
  private timer: NodeJS.Timeout | undefined;
  private readonly credentials: grpc.ChannelCredentials;
  private readonly removedListeners = new Set<(address: string) => void>();

  constructor(addresses: readonly string[], private readonly options: WorkerPoolOptions = {}) {
    this.credentials = channelCredentials(options.tls);
    this.setAddresses(addresses);
  }

  /** Replaces the known addresses (static list, or what service discovery found). */
  setAddresses(addresses: readonly string[]): void {
    const before = this.addresses;
    this.addresses = [...new Set(addresses)].sort();
    for (const a of [...this.info.keys()]) if (!this.addresses.includes(a)) this.info.delete(a);
    for (const [a, c] of [...this.clients]) {
      if (!this.addresses.includes(a)) {
        c.close();
        this.clients.delete(a);
      }
    }
    for (const a of before) {
      if (!this.addresses.includes(a)) for (const l of [...this.removedListeners]) l(a);
    }
  }

  /**
   * Calls `listener` with each address that leaves the pool. A closed channel lets its calls
   * run on, and a pod being deleted may keep serving for a while: a shard stream on it would not
   * fail by itself. Returns the unsubscribe function.
   */
  onRemoved(listener: (address: string) => void): () => void {
    this.removedListeners.add(listener);
    return () => this.removedListeners.delete(listener);
  }

  start(): void {
    const tick = () => {
      void this.poll().finally(() => {
        if (this.timer !== undefined) this.timer = setTimeout(tick, this.options.pollMs ?? 1000);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  async poll(): Promise<void> {
    await Promise.all(this.addresses.map(async (address) => {
      try {
        const info = await this.client(address).getInfo({}, { deadlineMs: this.options.timeoutMs ?? 2000 });
        // Discovery may have taken the address away while GetInfo was in flight.
        if (this.addresses.includes(address)) this.info.set(address, info);
      } catch {
        this.info.delete(address);
      }
    }));
  }

  /** Ready workers in address order (a deterministic plan for the same set). */
  ready(): WorkerInfo[] {
    return this.addresses.filter((a) => this.info.has(a)).map((a) => this.info.get(a)!);
  }

  isReady(address: string): boolean {
    return this.info.has(address);
  }

  markDead(address: string): void {
    this.info.delete(address);
  }

  client(address: string): WorkerClient {
    let c = this.clients.get(address);
    if (!c) {
      c = createClient(WorkerService, address, this.credentials, channelOptions(this.options.tls, { ...GRPC_OPTIONS, ...bearerClientOptions(this.options.token) }));
      this.clients.set(address, c);
    }
    return c;
  }

  /** Waits (bounded) until at least `count` workers are ready. */
  async waitForReady(count: number, timeoutMs: number, signal?: AbortSignal): Promise<WorkerInfo[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const ready = this.ready();
      if (ready.length >= count) return ready;
      if (Date.now() > deadline || signal?.aborted) return ready;
      await new Promise((r) => setTimeout(r, 200));
      await this.poll();
    }
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
