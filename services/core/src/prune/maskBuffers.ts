/**
 * Mask buffers reused from block to block, as BufferPool reuses weight buffers: decoder blocks
 * have the same shapes, so the next block's masks are written into the previous block's (cleared)
 * instead of new buffers whose pages the kernel must map and zero again, and that only the
 * garbage collector frees.
 */
import type { MaskJob } from "./maskPool.js";
import type { MaskResult } from "./maskSelect.js";

/** What selects masks (a MaskPool); the seam methods call (methods/method.ts MaskSelector). */
interface Selector {
  computeMasks(jobs: readonly MaskJob[]): Promise<MaskResult[]>;
}

export class MaskBuffers {
  private readonly free = new Map<number, Uint8Array[]>();

  /** A buffer of `length` bytes given back earlier, if any. */
  take(length: number): Uint8Array | undefined {
    return this.free.get(length)?.pop();
  }

  /**
   * Gives a mask back once nothing reads it: a whole buffer, plain (from this thread) or shared
   * (from mask threads, which write into shared memory only). A view into a larger buffer is
   * left to the garbage collector: keeping it would keep the whole buffer.
   */
  give(mask: Uint8Array): void {
    if (mask.byteOffset !== 0 || mask.byteLength !== mask.buffer.byteLength) return;
    let list = this.free.get(mask.length);
    if (!list) this.free.set(mask.length, (list = []));
    if (!list.includes(mask)) list.push(mask);
  }

  /** `inner`, with a recycled buffer for each job that has none and fits one. */
  selector(inner: Selector): Selector {
    return {
      computeMasks: (jobs) => inner.computeMasks(jobs.map((j) => {
        if (j.into) return j;
        const into = this.take(j.weight.inDim * j.weight.outDim);
        return into ? { ...j, into } : j;
      })),
    };
  }
}
