/**
 * A shard run's side of stall detection. The run sends a heartbeat every `heartbeatMs` on its
 * RunShard stream, from a timer on this process's event loop: a stopped process (SIGSTOP) keeps
 * its TCP connections open but sends nothing, and the coordinator declares it lost after its
 * stall timeout and reruns the shard elsewhere.
 *
 * When such a process is resumed it must not write into the job's output or work folder any
 * more: the shard belongs to another worker now, and the job may even be finished and its work
 * folder removed. The coordinator's cancel reaches it only through the network, in no set order
 * with its pending file I/O, so the run fences itself: a heartbeat tick that finds the event
 * loop was frozen for `fenceMs` (a share of the stall timeout, below it by a few heartbeats, so
 * that every freeze the coordinator can have noticed is caught), and every write guard that
 * finds the last tick that old, stops the run before the next write.
 */
import { status } from "@grpc/grpc-js";
import { RpcError } from "../../../rpc/index.js";

/** Heartbeat period when the coordinator names none. */
export const DEFAULT_HEARTBEAT_MS = 10_000;

export interface LivenessOptions {
  heartbeatMs: number;
  /** the coordinator's stall timeout; 0 = none (no fence) */
  stallTimeoutMs: number;
  subject: string;
  beat: () => void;
  /** the run must stop: `reason` is the error it stops with */
  frozen: (reason: Error) => void;
}

/** Share of the stall timeout after which a frozen run fences itself. */
const FENCE_SHARE = 0.75;

export class RunLiveness {
  private lastTick = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private fenced: Error | undefined;
  private readonly fenceMs: number;

  constructor(private readonly o: LivenessOptions) {
    this.fenceMs = o.stallTimeoutMs > 0 ? Math.max(o.stallTimeoutMs * FENCE_SHARE, o.stallTimeoutMs - 2 * o.heartbeatMs) : 0;
  }

  start(): void {
    this.lastTick = performance.now();
    this.timer = setInterval(() => this.tick(), this.o.heartbeatMs);
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    if (this.isFrozen()) return;
    this.lastTick = performance.now();
    this.o.beat();
  }

  /** True (and the run told to stop) once the event loop was frozen past the fence. */
  private isFrozen(): boolean {
    if (this.fenced) return true;
    const gap = performance.now() - this.lastTick;
    if (this.fenceMs === 0 || gap <= this.fenceMs) return false;
    this.fenced = new RpcError(status.ABORTED,
      `${this.o.subject}: this worker was frozen for ${(gap / 1000).toFixed(1)} s, past ${(this.fenceMs / 1000).toFixed(1)} s of the coordinator's ` +
      `${(this.o.stallTimeoutMs / 1000).toFixed(1)} s stall timeout; the shard belongs to another worker now, so this run stopped before writing anything more`);
    this.stop();
    this.o.frozen(this.fenced);
    return true;
  }

  /** Call before every write to the output or the work folder. */
  guard(): void {
    if (this.isFrozen()) throw this.fenced!;
  }
}
