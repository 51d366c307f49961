/**
 * Speed of mask selection on a float16 [4096, 4096] MatMul weight with a random positive scale:
 * one thread, absolute (params/s) and relative to a plain copy of the same bytes, which factors
 * out the machine's memory speed; two threads (MaskPool) over one, the weight in the pool's
 * weight buffer as the engine reads it (the first thread selects in place) and, beside it, in
 * plain memory (the pool copies the thread's columns), into reused mask buffers as the engine runs
 * them and into new ones; the ceiling of that ratio on
 * this machine at that moment (each thread selecting a whole linear of its own, both at once, no
 * pool: what the two cores give this kernel) and the pool's share of it;
 * and what sharing the weights with a thread costs: a copy into a SharedArrayBuffer against a
 * transfer of the buffer to a thread and back, and the pool's row-by-row copy into shared memory
 * by TypedArray.set against runCopier's Buffer.copy.
 */
import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import { applyMask, computeMask } from "../services/core/src/prune/maskSelect.js";
import { MaskPool } from "../services/core/src/prune/maskPool.js";
import { runCopier } from "../services/core/src/prune/byteCopy.js";
import type { BenchLine } from "./benchLine.js";
import { bestOf, inWeightBuffer, randomLinear } from "./benchLinear.js";
import { mulberry32 } from "../services/core/src/calib/seededRandom.js";

const IN = 4096;
const OUT = 4096;

/** Deterministic PRNG (mulberry32) so runs are comparable. */
const rng = mulberry32;

/**
 * One selection on this thread and one on `other` at once (each a whole linear, each its own
 * weights): the milliseconds of each. Rates, not wall time, make the ceiling, so neither the
 * message to the other thread nor a core slower than the other understates it.
 */
async function selectOnBoth(other: Worker, here: () => unknown): Promise<{ here: number; other: number }> {
  const answer = new Promise<number>((resolve) => other.once("message", resolve));
  other.postMessage(0);
  const t0 = performance.now();
  here();
  const hereMs = performance.now() - t0;
  return { here: hereMs, other: await answer };
}

/** Seconds to move `bytes` to a thread and back by transfer (the buffer is detached, not copied). */
async function transferRoundTrip(bytes: Uint8Array, runs: number): Promise<number> {
  const echo = new Worker(`require("node:worker_threads").parentPort.on("message", (b) => require("node:worker_threads").parentPort.postMessage(b, [b]))`, { eval: true });
  let buffer = bytes.slice().buffer;
  const roundTrip = () => new Promise<void>((resolve) => {
    echo.once("message", (b: ArrayBuffer) => {
      buffer = b;
      resolve();
    });
    echo.postMessage(buffer, [buffer]);
  });
  try {
    await roundTrip();
    return await bestOf(runs, roundTrip);
  } finally {
    await echo.terminate();
  }
}

export async function benchMask(): Promise<BenchLine[]> {
  const { weight: w, scale } = randomLinear(rng(1234), "bench", IN, OUT);
  const bytes = w.bytes;
  const opts = { sparsity: 0.5, pattern: { kind: "unstructured" as const } };

  // As the engine runs it from the second block on: into the previous block's mask buffer
  // (prune/maskBuffers.ts). A new buffer each time is reported beside it.
  const into = new Uint8Array(IN * OUT);
  const dst = new Uint8Array(bytes.length);
  computeMask(w, scale, opts, into); // warm up the JIT
  // Interleaved, so the selection and the copy it is compared with see the same phase of a
  // shared machine (its speed drifts by a third from one second to the next).
  // Applying the mask (every replica and process does it whole, per block) on a copy of the weight.
  const target = { ...w, bytes: new Uint8Array(bytes.length) };
  let [maskS, freshS, copyS, applyS] = [Infinity, Infinity, Infinity, Infinity];
  for (let i = 0; i < 9; i++) {
    maskS = Math.min(maskS, await bestOf(1, () => computeMask(w, scale, opts, into)));
    freshS = Math.min(freshS, await bestOf(1, () => computeMask(w, scale, opts)));
    copyS = Math.min(copyS, await bestOf(3, () => dst.set(bytes)));
    target.bytes.set(bytes);
    applyS = Math.min(applyS, await bestOf(1, () => applyMask(target, into)));
  }

  // As the engine runs them: each into the previous block's mask (plain memory on one thread,
  // shared memory, which the threads write, on two); new buffers each time beside it.
  const shared = new Uint8Array(new SharedArrayBuffer(IN * OUT));
  const one = MaskPool.start(1);
  const two = MaskPool.start(2);
  // As the engine reads it with a pool of threads: into the pool's weight buffer.
  const resident = inWeightBuffer(two, w);
  const reused = {
    one: [{ weight: w, scale, options: opts, into }],
    two: [{ weight: resident, scale, options: opts, into: shared }],
    twoCopied: [{ weight: w, scale, options: opts, into: shared }],
  };
  const fresh = [{ weight: w, scale, options: opts }];
  const freshResident = [{ weight: resident, scale, options: opts }];
  const best = { one: Infinity, two: Infinity, twoCopied: Infinity, oneNew: Infinity, twoNew: Infinity };
  const pair = { here: Infinity, other: Infinity };
  const other = new Worker(new URL("./maskCeilingThread.js", import.meta.url), { workerData: { weight: w, scale, options: opts } });
  try {
    await new Promise((resolve) => other.once("message", resolve));
    await two.computeMasks(reused.two); // starts and warms the thread
    // Interleaved, so both see the same share of a busy machine's cores.
    for (let i = 0; i < 9; i++) {
      best.one = Math.min(best.one, await bestOf(1, () => one.computeMasks(reused.one)));
      best.two = Math.min(best.two, await bestOf(1, () => two.computeMasks(reused.two)));
      best.twoCopied = Math.min(best.twoCopied, await bestOf(1, () => two.computeMasks(reused.twoCopied)));
      best.oneNew = Math.min(best.oneNew, await bestOf(1, () => one.computeMasks(fresh)));
      best.twoNew = Math.min(best.twoNew, await bestOf(1, () => two.computeMasks(freshResident)));
      const both = await selectOnBoth(other, () => computeMask(w, scale, opts, into));
      pair.here = Math.min(pair.here, both.here / 1000);
      pair.other = Math.min(pair.other, both.other / 1000);
    }
  } finally {
    await other.terminate();
    await two.close();
    await one.close();
  }
  const shareCopyS = await bestOf(10, () => new Uint8Array(new SharedArrayBuffer(bytes.length)).set(bytes));
  const transferS = await transferRoundTrip(bytes, 10);
  // The pool's copy of a thread's share: rows of 54% of a row each, into shared memory.
  const rowTarget = new Uint8Array(new SharedArrayBuffer(bytes.length)).fill(1);
  const runBytes = Math.round((OUT * 0.54) / 16) * 16 * 2;
  const copyRuns = (copy: (from: number, to: number, length: number) => void) => {
    for (let c = 0; c < IN; c++) copy(c * OUT * 2, c * OUT * 2, runBytes);
  };
  const viaSet = (from: number, to: number, length: number) => rowTarget.set(bytes.subarray(from, from + length), to);
  let [rowSetS, rowCopyS] = [Infinity, Infinity];
  for (let i = 0; i < 9; i++) {
    rowSetS = Math.min(rowSetS, await bestOf(1, () => copyRuns(viaSet)));
    rowCopyS = Math.min(rowCopyS, await bestOf(1, () => copyRuns(runCopier(bytes, rowTarget))));
  }

  // Best of the rounds, as for the speedup: each thread's fastest selection while the other ran one.
  const ceiling = best.one * (1 / pair.here + 1 / pair.other);
  const speedup = best.one / best.two;
  const shape = `${IN}x${OUT}`;
  return [
    { bench: "mask_params_per_s", value: (IN * OUT) / maskS, unit: "params/s", dtype: "float16", shape, seconds: maskS },
    { bench: "mask_vs_memcpy", value: maskS / copyS, unit: "ratio", dtype: "float16", shape, memcpy_seconds: copyS, mask: "into a reused buffer" },
    { bench: "mask_apply_vs_memcpy", value: applyS / copyS, unit: "ratio", dtype: "float16", shape, seconds: applyS, memcpy_seconds: copyS, note: "zeroing the masked elements in place (applyMask), against a copy of the weight's bytes" },
    { bench: "mask_vs_memcpy_new_buffer", value: freshS / copyS, unit: "ratio", dtype: "float16", shape, memcpy_seconds: copyS, mask: "into a new buffer" },
    { bench: "mask_threads2_speedup", value: speedup, unit: "ratio", dtype: "float16", shape, one_thread_seconds: best.one, two_threads_seconds: best.two, mask: "into a reused buffer", weight: "in the pool's weight buffer, as the engine reads it" },
    { bench: "mask_threads2_speedup_copied", value: best.one / best.twoCopied, unit: "ratio", dtype: "float16", shape, one_thread_seconds: best.one, two_threads_seconds: best.twoCopied, mask: "into a reused buffer", weight: "in plain memory: the pool copies the thread's columns" },
    {
      bench: "mask_threads2_ceiling", value: ceiling, unit: "ratio", dtype: "float16", shape, one_thread_seconds: best.one, pair_this_thread_seconds: pair.here, pair_other_thread_seconds: pair.other,
      note: "each thread selecting a whole linear of its own, both at once, no pool: one thread's time times the two threads' summed rates (2 where the cores keep their speed side by side)",
    },
    { bench: "mask_threads2_efficiency", value: speedup / ceiling, unit: "ratio", dtype: "float16", shape, note: "mask_threads2_speedup over mask_threads2_ceiling: what the pool (the split, the messages, this thread staging its share) keeps of what the two cores give" },
    { bench: "mask_threads2_speedup_new_buffer", value: best.oneNew / best.twoNew, unit: "ratio", dtype: "float16", shape, one_thread_seconds: best.oneNew, two_threads_seconds: best.twoNew, mask: "into a new buffer", weight: "in the pool's weight buffer" },
    { bench: "mask_row_copy_set_over_buffer_copy", value: rowSetS / rowCopyS, unit: "ratio", dtype: "float16", shape, set_seconds: rowSetS, buffer_copy_seconds: rowCopyS, rows: IN, run_bytes: runBytes, into: "shared memory" },
    { bench: "mask_share_copy_over_transfer", value: shareCopyS / transferS, unit: "ratio", dtype: "float16", shape, copy_seconds: shareCopyS, transfer_round_trip_seconds: transferS },
  ];
}
