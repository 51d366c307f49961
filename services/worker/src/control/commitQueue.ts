/**
 * Block commits run one after another behind the compute: a block's checkpoint (its weights,
 * fsynced; its output states; blocks/<b>.json) is written while the next block is computed. The
 * writes are mostly waits on the disk, so on a busy CPU they cost the next block nothing, and the
 * order of the commits (and of the progress events sent through the queue) stays the order of
 * the blocks: block b is done before block b + 1 is.
 */
export class CommitQueue {
  private tail: Promise<void> = Promise.resolve();
  private error: { reason: unknown } | undefined;

  /** `onError` hears the first failure once (the run cancels its compute with it). */
  constructor(private readonly onError: (reason: unknown) => void) {}

  /**
   * Runs `task` after every task queued before it; skipped once one has failed. The promise
   * settles (never rejects) when the task has.
   */
  push(task: () => Promise<void>): Promise<void> {
    this.tail = this.tail.then(async () => {
      if (this.error) return;
      try {
        await task();
      } catch (reason) {
        this.error = { reason };
        this.onError(reason);
      }
    });
    return this.tail;
  }

  /** Throws the first failure, if a task has failed by now. */
  throwIfFailed(): void {
    if (this.error) throw this.error.reason;
  }

  /** Waits for every queued task; throws the first failure. */
  async drain(): Promise<void> {
    await this.tail;
    this.throwIfFailed();
  }

  /** Waits for every queued task, failed or not (before the run closes the files they write). */
  settled(): Promise<void> {
    return this.tail;
  }
}
