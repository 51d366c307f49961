/**
 * "Something changed": what a table the data plane serves from (outboxes, exchange records)
 * gives the calls waiting on it. Waiters listen before they look, so nothing is missed.
 */
export class ChangeSignal {
  private readonly listeners = new Set<() => void>();

  /** Resolves at the next notify(), or when the signal aborts. */
  next(signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.listeners.delete(done);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      this.listeners.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  notify(): void {
    for (const l of [...this.listeners]) l();
  }
}
