/**
 * Threads that run one solve together (SparseGPT's factorization of one wide Hessian, the longest
 * task of a block): each knows its rank, how many they are, and waits for the others at a barrier
 * in shared memory. Each entry is still computed by one thread with the one-thread code's
 * operations in their order, so every team size gives the same bits.
 */
import { RuntimeError } from "../errors.js";

export interface SolveTeam {
  rank: number;
  size: number;
  /** Returns once every member has called it as often; throws when a member failed. */
  sync(): void;
}

/** One thread alone: every share is the whole, nothing to wait for. */
export const SOLO: SolveTeam = { rank: 0, size: 1, sync: () => undefined };

/** control[ARRIVED]: members at the barrier; control[ROUND]: barriers passed; control[ABORT]: 1 once one failed. */
const ARRIVED = 0;
const ROUND = 1;
const ABORT = 2;
export const TEAM_CONTROL_LENGTH = 3;

/** Loads before a member at the barrier sleeps: the others are usually microseconds away. */
const SPINS = 20_000;
/** A sleeping member wakes this often to look for an abort whose notice it missed. */
const WAIT_MS = 200;

/** The control words a team shares (every member is given the same array). */
export function teamControl(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(TEAM_CONTROL_LENGTH * 4));
}

/** Member `rank` of `size` threads on `control`. */
export function sharedTeam(control: Int32Array, rank: number, size: number): SolveTeam {
  const aborted = () => {
    if (Atomics.load(control, ABORT) !== 0) throw new RuntimeError("solve team", "another thread of the team failed");
  };
  return {
    rank,
    size,
    sync() {
      aborted();
      const round = Atomics.load(control, ROUND);
      if (Atomics.add(control, ARRIVED, 1) === size - 1) {
        // The last to arrive opens the next round; nobody arrives again before it changes.
        Atomics.store(control, ARRIVED, 0);
        Atomics.add(control, ROUND, 1);
        Atomics.notify(control, ROUND);
        return;
      }
      for (let s = 0; s < SPINS; s++) if (Atomics.load(control, ROUND) !== round) return;
      while (Atomics.load(control, ROUND) === round) {
        aborted();
        Atomics.wait(control, ROUND, round, WAIT_MS);
      }
    },
  };
}

/** Tells every member of the team on `control` to stop at its next barrier (a member failed). */
export function abortTeam(control: Int32Array): void {
  Atomics.store(control, ABORT, 1);
  Atomics.notify(control, ROUND);
}

/** True for the error a member throws because another failed (the other's error is the one to report). */
export function isTeamAbort(e: { subject?: string }): boolean {
  return e.subject === "solve team";
}

/**
 * How a team divides the two triangular phases of a factorization (L⁻¹'s columns, H⁻¹'s rows):
 * each member's share of the modelled work, summing to 1. Equal shares are the model's balance;
 * two threads at once do not run each share at the speed they run it alone (they share the
 * memory bus, unevenly), so a pool learns the shares from the members' times (splitFromTimes).
 */
export interface TeamSplit {
  inverse: readonly number[];
  product: readonly number[];
}

export function evenSplit(size: number): TeamSplit {
  const even = Array.from({ length: size }, () => 1 / size);
  return { inverse: even, product: even };
}

/**
 * The shares that would have balanced `times` (each member's milliseconds on its `shares`),
 * blended half and half with `shares` so that one noisy run moves them only part of the way.
 */
export function balancedShares(shares: readonly number[], times: readonly number[]): number[] {
  const speeds = shares.map((s, t) => s / Math.max(times[t]!, 1e-3));
  const total = speeds.reduce((x, y) => x + y, 0);
  const blended = shares.map((s, t) => Math.min(0.9, Math.max(0.1 / shares.length, (s + speeds[t]! / total) / 2)));
  const sum = blended.reduce((x, y) => x + y, 0);
  return blended.map((b) => b / sum);
}

/**
 * [b0 = 0, ..., b_size = n]: ranges [b_t, b_{t+1}) of items i < n whose work falls as (n − i)²
 * (the rows of a triangular product, the columns of a triangular solve), member t's holding
 * about shares[t] of the work, every bound but n a multiple of `align`.
 */
export function triangularBounds(n: number, shares: readonly number[], align = 1): number[] {
  const bounds = [0];
  let before = 0;
  for (let t = 0; t + 1 < shares.length; t++) {
    before += shares[t]!;
    const cut = n * (1 - Math.cbrt(Math.max(0, 1 - before)));
    bounds.push(Math.min(n, Math.max(bounds.at(-1)!, Math.round(cut / align) * align)));
  }
  bounds.push(n);
  return bounds;
}
