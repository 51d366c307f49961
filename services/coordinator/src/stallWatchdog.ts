/**
 * The coordinator's progress deadline for one RunShard stream. A stopped worker (SIGSTOP, a
 * hung host) keeps its TCP connection open and never fails the stream: only the absence of
 * messages (heartbeats or progress) for `timeoutMs` says it is gone.
 *
 * The deadline is measured on this process's event loop too: when the coordinator itself was
 * frozen (a long synchronous step, a paused VM), the messages that arrived meanwhile still wait
 * in its socket, so the worker gets a fresh window instead of being blamed for our silence.
 */
export class StallWatchdog {
  private lastMessage = performance.now();
  private lastTick = performance.now();
  private readonly timer: NodeJS.Timeout;
  private readonly tickMs: number;

  constructor(private readonly timeoutMs: number, private readonly onStall: (silentMs: number) => void) {
    this.tickMs = Math.max(10, Math.min(1000, timeoutMs / 8));
    this.timer = setInterval(() => this.tick(), this.tickMs);
  }

  /** A message arrived from the worker. */
  alive(): void {
    this.lastMessage = performance.now();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private tick(): void {
    const now = performance.now();
    if (now - this.lastTick > Math.max(4 * this.tickMs, this.timeoutMs / 2)) this.lastMessage = now;
    this.lastTick = now;
    const silent = now - this.lastMessage;
    if (silent > this.timeoutMs) {
      this.stop();
      this.onStall(silent);
    }
  }
}

/** How often a worker is asked to send heartbeats: several per stall timeout, at most every 10 s. */
export function heartbeatMs(stallTimeoutMs: number): number {
  return Math.round(Math.min(10_000, Math.max(50, stallTimeoutMs / 6)));
}

/** The default of `--stall-timeout` (seconds). */
export const DEFAULT_STALL_TIMEOUT_S = 120;
