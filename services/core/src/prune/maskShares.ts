/**
 * How a MaskPool splits each column-scope linear between its threads, learnt from its own
 * batches. The pool's thread copies the other threads' columns into their memories before it
 * selects its own share, so the split that makes every thread end together depends on the
 * machine (its memory bandwidth, how busy each core is), not only on the thread count: a
 * constant tuned on one machine left one thread waiting 1.5-3 ms of a 22 ms linear in another
 * phase of the same one. Each batch's timings update three estimates (the first measurement
 * replaces the starting guess; later ones, the median of the last few, so a batch in which a
 * thread lost its core for a while moves nothing): the pool thread's selection speed, its copy
 * cost per column it copies, and each other thread's speed. The next split solves for an
 * equal finish.
 * Any split gives the same bits (columns are independent): this only moves time.
 */

/** What one batch measured: the split it ran with and the time each part took. */
export interface BatchTiming {
  /** the split the batch ran with (shares of each column-scope linear, thread 0 first; sum 1) */
  shares: readonly number[];
  /** in·out summed over the batch's column-scope linears */
  params: number;
  /** the pool thread copying the others' columns, then selecting its own (ms) */
  copyMs: number;
  /**
   * params whose columns the pool's thread copied for the others (at most what it did not keep;
   * less where whole weights went to threads by transfer, which costs it nothing)
   */
  copied: number;
  ownMs: number;
  /** each other thread, from its start to its last column (ms; waits for copied rows included) */
  threadMs: readonly number[];
}

/**
 * Batches of fewer parameters teach nothing: a thread's time is then mostly the message that
 * starts it and the one that ends it (~0.1-0.3 ms), not its selection (1M: ~2.5 ms on one thread).
 */
export const MIN_LEARNING_PARAMS = 1 << 20;

/**
 * The measurements each estimate is the median of. This machine's timings are heavy-tailed (a
 * thread descheduled for part of a batch reads up to twice as slow): a running average with 0.3
 * of each batch swung the split by 0.05-0.1 after such a batch, and the next batch or two then
 * ended one thread 2-6 ms of ~20 before the other.
 */
const WINDOW = 5;

/** The median of the last WINDOW measurements: the guess until the first one. */
class Estimate {
  private readonly recent: number[] = [];

  /** Adds a measurement; one that is not positive and finite is left out. */
  add(measured: number): void {
    if (!(measured > 0 && Number.isFinite(measured))) return;
    this.recent.push(measured);
    if (this.recent.length > WINDOW) this.recent.shift();
  }

  /** The median (the mean of the middle two for an even count), or null before any measurement. */
  get value(): number | null {
    if (this.recent.length === 0) return null;
    const sorted = [...this.recent].sort((a, b) => a - b);
    const m = sorted.length >> 1;
    return sorted.length % 2 === 1 ? sorted[m]! : (sorted[m - 1]! + sorted[m]!) / 2;
  }
}

export class MaskShares {
  /**
   * params per ms: the pool thread's selection (index 0), then each other thread's; null until
   * measured (a thread with a share of 0 is never measured): taken as the mean of the measured
   * ones, as threads of one machine are alike until shown otherwise.
   */
  private readonly speeds: Estimate[];
  /** the pool thread's ms per param it copies, over its selection's ms per param; null until measured */
  private readonly copyRatio = new Estimate();

  /**
   * `copyCost`: what copying a column costs the pool's thread relative to selecting it, the
   * guess until a batch has measured it.
   */
  constructor(readonly threads: number, private readonly copyCost: number) {
    if (!(Number.isSafeInteger(threads) && threads >= 1)) throw new RangeError(`threads must be a positive integer, got ${threads}`);
    this.speeds = Array.from({ length: threads }, () => new Estimate());
  }

  /**
   * The split for the next batch: a share per thread (thread 0: the pool's own), summing to 1.
   * `copied`: the part of the other threads' shares whose columns the pool's thread will copy
   * (1: all of it; less where whole weights go to them by transfer).
   */
  shares(copied = 1): readonly number[] {
    return this.solve(Math.min(1, Math.max(0, copied)));
  }

  /** Learns from one batch; timings of a batch too small or too fast to measure are ignored. */
  record(t: BatchTiming): void {
    if (this.threads === 1 || !(t.params >= MIN_LEARNING_PARAMS) || t.shares.length !== this.threads || t.threadMs.length !== this.threads - 1) return;
    const ms = [t.ownMs, ...t.threadMs];
    t.shares.forEach((share, i) => {
      // A share of 0 says nothing about a thread's speed: the old estimate stays.
      if (share > 0) this.speeds[i]!.add((share * t.params) / ms[i]!);
    });
    // (a batch that copied little, its other shares gone by transfer, says little about the copy)
    if (t.copied >= MIN_LEARNING_PARAMS) this.copyRatio.add((t.copyMs / t.copied) * this.speedsNow()[0]!);
  }

  /** The speeds, each unmeasured one the mean of the measured (all 1 before any is). */
  private speedsNow(): number[] {
    const values = this.speeds.map((e) => e.value);
    const known = values.filter((v): v is number => v !== null);
    const mean = known.length > 0 ? known.reduce((a, b) => a + b, 0) / known.length : 1;
    return values.map((v) => v ?? mean);
  }

  /**
   * Shares with equal finish times T: thread t (t >= 1) selects s_t = v_t T; the pool's thread
   * selects s0 and copies the part q of the rest, s0 / v0 + c q (1 - s0) / v0 = T, where c is the
   * copy ratio. With V = sum of v_t: 1 - s0 = V T, so s0 = a / (1 + a) with a = v0 / V - c q, at
   * least 0 (the pool's thread then only copies).
   */
  private solve(copied: number): number[] {
    if (this.threads === 1) return [1];
    const [ownSpeed, ...threadSpeeds] = this.speedsNow() as [number, ...number[]];
    const others = threadSpeeds.reduce((a, b) => a + b, 0);
    const a = Math.max(0, ownSpeed / others - (this.copyRatio.value ?? this.copyCost) * copied);
    const own = a / (1 + a);
    return [own, ...threadSpeeds.map((v) => ((1 - own) * v) / others)];
  }
}
