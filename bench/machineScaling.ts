/**
 * What two threads get from this machine's cores at the moment the other figures are taken:
 * the same work on one thread, then on two at once, for a pure arithmetic loop (cores only) and
 * for copying 64 MiB buffers (memory bandwidth). `*_threads2_*` goals (mask selection, replicas)
 * are bounded by these: a figure below 2 here is the machine, not the code above it.
 */
import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import type { BenchLine } from "./benchLine.js";

/** Both kernels as source, so the second thread runs exactly what this one runs. */
const KERNELS = `
const kernels = {
  alu(n) { let x = 1; for (let i = 0; i < n; i++) x = (Math.imul(x, 1103515245) + 12345) | 0; return x; },
  copy(n) { const a = new Uint8Array(64 << 20).fill(1), b = new Uint8Array(a.length); for (let i = 0; i < n; i++) b.set(a); return b[7]; },
};`;
const WORK = { alu: 1e8, copy: 6 } as const;
type Kernel = keyof typeof WORK;

const kernels = new Function(`${KERNELS} return kernels;`)() as Record<Kernel, (n: number) => number>;

function startPeer(): Worker {
  const peer = new Worker(
    `${KERNELS}
const { parentPort } = require("node:worker_threads");
parentPort.on("message", ({ kernel, n }) => { const t = performance.now(); kernels[kernel](n); parentPort.postMessage(performance.now() - t); });`,
    { eval: true },
  );
  return peer;
}

function timed(kernel: Kernel): number {
  const t0 = performance.now();
  kernels[kernel](WORK[kernel]);
  return performance.now() - t0;
}

/** One thread's time over the slower of two threads running the same work at once (best of rounds, interleaved). */
async function throughput2(peer: Worker, kernel: Kernel, rounds: number): Promise<{ ratio: number; one: number; two: number }> {
  let one = Infinity;
  let two = Infinity;
  for (let r = 0; r < rounds; r++) {
    one = Math.min(one, timed(kernel));
    const theirs = new Promise<number>((resolve) => peer.once("message", resolve));
    const t0 = performance.now();
    peer.postMessage({ kernel, n: WORK[kernel] });
    timed(kernel);
    await theirs;
    two = Math.min(two, performance.now() - t0);
  }
  return { ratio: (2 * one) / two, one: one / 1000, two: two / 1000 };
}

export async function benchMachineScaling(): Promise<BenchLine[]> {
  const peer = startPeer();
  try {
    timed("alu");
    const alu = await throughput2(peer, "alu", 5);
    const copy = await throughput2(peer, "copy", 5);
    const line = (name: string, m: { ratio: number; one: number; two: number }, what: string): BenchLine => ({
      bench: name, value: m.ratio, unit: "ratio", what, one_thread_seconds: m.one, two_threads_seconds: m.two,
    });
    return [
      line("machine_threads2_alu_throughput", alu, "an integer loop on one thread, then on two at once: twice the work over the time"),
      line("machine_threads2_copy_throughput", copy, "copying 64 MiB buffers on one thread, then on two at once: twice the work over the time"),
    ];
  } finally {
    await peer.terminate();
  }
}
