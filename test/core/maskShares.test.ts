/**
 * MaskShares: the split of each linear between a MaskPool's threads, learnt from the batches'
 * timings. Checked against a simulated machine whose speeds are known, so the split that ends
 * every thread together is known too.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { MIN_LEARNING_PARAMS, MaskShares, type BatchTiming } from "../../services/core/src/prune/maskShares.js";

/** A machine: the pool thread selects ownSpeed params/ms and copies a param in copyRatio/ownSpeed ms; thread t selects speeds[t]. */
interface Machine { ownSpeed: number; copyRatio: number; speeds: number[] }

function timing(m: Machine, shares: readonly number[], params: number): BatchTiming {
  return {
    shares, params,
    copyMs: ((1 - shares[0]!) * params * m.copyRatio) / m.ownSpeed,
    copied: (1 - shares[0]!) * params,
    ownMs: (shares[0]! * params) / m.ownSpeed,
    threadMs: m.speeds.map((v, i) => (shares[i + 1]! * params) / v),
  };
}

function finishTimes(m: Machine, shares: readonly number[], params: number): number[] {
  const t = timing(m, shares, params);
  return [t.copyMs + t.ownMs, ...t.threadMs];
}

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);

describe("MaskShares", () => {
  test("starts from the copy cost alone: own share (1 - c(n-1)) / (n - c(n-1)), the rest even", () => {
    assert.deepEqual(new MaskShares(1, 0.1).shares(), [1]);
    for (const n of [2, 3, 5]) {
      const c = 0.1;
      const shares = new MaskShares(n, c).shares();
      const own = (1 - c * (n - 1)) / (n - c * (n - 1));
      assert.equal(shares.length, n);
      assert.ok(Math.abs(shares[0]! - own) < 1e-12, `${n} threads: ${shares[0]} vs ${own}`);
      for (const s of shares.slice(1)) assert.ok(Math.abs(s - (1 - own) / (n - 1)) < 1e-12);
    }
    // Hand-computed: 2 threads, c = 0.1: 0.9 / 1.9.
    assert.ok(Math.abs(new MaskShares(2, 0.1).shares()[0]! - 0.9 / 1.9) < 1e-12);
  });

  test("learns a machine's speeds: every thread then ends together (the analytic split)", () => {
    // Pool thread twice as fast as thread 1, four times thread 2; copying costs 0.2 of selecting.
    const m: Machine = { ownSpeed: 4e5, copyRatio: 0.2, speeds: [2e5, 1e5] };
    const shares = new MaskShares(3, 0.1);
    for (let i = 0; i < 60; i++) shares.record(timing(m, shares.shares(), 4e6));
    const s = shares.shares();
    assert.ok(Math.abs(sum(s) - 1) < 1e-12);
    const times = finishTimes(m, s, 4e6);
    assert.ok(Math.max(...times) / Math.min(...times) < 1.001, `finish times ${times}`);
    // a = v0 / V - c = 4/3 - 0.2; s0 = a / (1 + a); the others in proportion 2 : 1.
    const a = 4 / 3 - 0.2;
    assert.ok(Math.abs(s[0]! - a / (1 + a)) < 1e-6, `own share ${s[0]}`);
    assert.ok(Math.abs(s[1]! / s[2]! - 2) < 1e-6);
  });

  test("follows a machine that changes; batches in which a thread lost its core move nothing until they are most of the last five", () => {
    const shares = new MaskShares(2, 0.1);
    const steady: Machine = { ownSpeed: 3e5, copyRatio: 0.1, speeds: [3e5] };
    for (let i = 0; i < 60; i++) shares.record(timing(steady, shares.shares(), 4e6));
    const before = shares.shares()[0]!;
    assert.ok(Math.abs(before - 0.9 / 1.9) < 1e-6);
    // Batches in which the other thread was descheduled for most of it (three times as slow):
    // the median of the last five is still a steady batch's after one and after two of them.
    const slow = () => {
      const t = timing(steady, shares.shares(), 4e6);
      shares.record({ ...t, threadMs: [t.threadMs[0]! * 3] });
    };
    slow();
    assert.ok(Math.abs(shares.shares()[0]! - before) < 1e-12, `one slow batch: ${before} -> ${shares.shares()[0]}`);
    slow();
    assert.ok(Math.abs(shares.shares()[0]! - before) < 1e-12, `two slow batches: ${before} -> ${shares.shares()[0]}`);
    // A third is the median: the other thread now reads three times as slow, a = 3 - 0.1 (by hand).
    slow();
    assert.ok(Math.abs(shares.shares()[0]! - 2.9 / 3.9) < 1e-9, `three slow batches: ${shares.shares()[0]}`);
    // The other thread's core is now shared with something else, for good: half as fast.
    const busy: Machine = { ...steady, speeds: [1.5e5] };
    for (let i = 0; i < 60; i++) shares.record(timing(busy, shares.shares(), 4e6));
    const times = finishTimes(busy, shares.shares(), 4e6);
    assert.ok(Math.max(...times) / Math.min(...times) < 1.001, `finish times ${times}`);
  });

  test("a copy dearer than the pool thread's own work leaves it only copying; it recovers when the copy gets cheap", () => {
    const shares = new MaskShares(3, 5);
    assert.deepEqual(shares.shares(), [0, 0.5, 0.5]);
    // With its share at 0 it still measures the copy: cheap now, so it takes columns again.
    const m: Machine = { ownSpeed: 2e5, copyRatio: 0.05, speeds: [2e5, 2e5] };
    for (let i = 0; i < 60; i++) shares.record(timing(m, shares.shares(), 4e6));
    const s = shares.shares();
    assert.ok(s.every((x) => x >= 0) && Math.abs(sum(s) - 1) < 1e-12);
    const times = finishTimes(m, s, 4e6);
    assert.ok(Math.max(...times) / Math.min(...times) < 1.001, `finish times ${times}`);
  });

  test("weights given to the threads by transfer cost the pool's thread no copy: the part it copies sets its share", () => {
    const shares = new MaskShares(2, 0.1);
    // Hand-computed, equal speeds: a = 1 - 0.1 q, s0 = a / (1 + a).
    for (const q of [1, 0.5, 0]) {
      const a = 1 - 0.1 * q;
      assert.ok(Math.abs(shares.shares(q)[0]! - a / (1 + a)) < 1e-12, `q = ${q}: ${shares.shares(q)}`);
    }
    assert.deepEqual(shares.shares(0), [0.5, 0.5]);
    assert.deepEqual(shares.shares(-1), shares.shares(0));
    assert.deepEqual(shares.shares(), shares.shares(1));
    // A batch that copied almost nothing leaves the copy ratio where it was, and still teaches the speeds.
    const m: Machine = { ownSpeed: 4e5, copyRatio: 0.2, speeds: [2e5] };
    const t = timing(m, shares.shares(0), 4e6);
    shares.record({ ...t, copyMs: 0.01, copied: MIN_LEARNING_PARAMS - 1 });
    const a = 4e5 / 2e5 - 0.1; // the speeds learnt, the copy still the guess
    assert.ok(Math.abs(shares.shares(1)[0]! - a / (1 + a)) < 1e-9, `${shares.shares(1)}`);
    assert.ok(Math.abs(shares.shares(0)[0]! - 2 / 3) < 1e-9, `${shares.shares(0)}`);
  });

  test("ignores batches it cannot learn from: too few parameters, wrong lengths, times that are not positive and finite", () => {
    const shares = new MaskShares(2, 0.1);
    const start = [...shares.shares()];
    const t = timing({ ownSpeed: 1e5, copyRatio: 0.1, speeds: [3e5] }, start, 4e6);
    shares.record({ ...t, params: 0 });
    shares.record(timing({ ownSpeed: 1e5, copyRatio: 0.1, speeds: [3e5] }, start, MIN_LEARNING_PARAMS - 1));
    shares.record({ ...t, shares: [1] });
    shares.record({ ...t, threadMs: [] });
    shares.record({ ...t, copyMs: NaN, ownMs: Infinity, threadMs: [-1] });
    shares.record({ ...t, copyMs: 0, ownMs: 0, threadMs: [0] });
    assert.deepEqual(shares.shares(), start);
    assert.throws(() => new MaskShares(0, 0.1), RangeError);
  });
});
