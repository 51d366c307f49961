/**
 * Weight buffers inside a mask thread's shared kernel memory (maskPool.ts). The engine reads a
 * block's weights into them when a pool has threads: that thread's kernel then selects any
 * columns of those weights in place, and the pool's own thread reads its share from the same
 * bytes, so a linear split between the two is never copied for the other. onnxruntime reads the
 * same bytes for the block's forwards (onnxruntime-node 1.30 takes tensors over shared memory).
 *
 * Decoder blocks repeat their shapes, so a freed buffer is kept for the next request of its
 * exact size, as BufferPool does for plain buffers; anything else is taken from the top. The
 * memory never shrinks (WebAssembly memories cannot), which is BufferPool's behaviour too.
 */
import type { WasmMemory } from "./wasmAssembler.js";

/** Buffers start at multiples of this (a cache line; every typed view is aligned). */
const ALIGN = 64;

export class ResidentArena {
  /** byteLength of each live buffer, by byteOffset */
  private readonly live = new Map<number, number>();
  /** freed buffers' offsets, by byteLength */
  private readonly free = new Map<number, number[]>();
  /** the SharedArrayBuffer objects this arena made views over (each grow gives a new one) */
  private readonly buffers = new WeakSet<ArrayBufferLike>();
  private end: number;
  /** the pool's copies for a batch lie below this while it runs: nothing new may start below */
  private floor = 0;

  /** Buffers from `start` up to `limit` bytes of `memory` (a shared WebAssembly memory). */
  constructor(private readonly memory: WasmMemory, private readonly start: number, private readonly limit: number) {
    this.end = align(start);
  }

  /** A buffer of `byteLength` bytes (contents undefined), or null when it would pass the limit. */
  acquire(byteLength: number): Uint8Array | null {
    if (!(Number.isSafeInteger(byteLength) && byteLength > 0)) return null;
    let at = this.free.get(byteLength)?.pop();
    if (at === undefined) {
      const from = Math.max(this.end, align(this.floor));
      if (from + byteLength > this.limit) return null;
      at = from;
      this.end = align(from + byteLength);
      const have = this.memory.buffer.byteLength;
      if (this.end > have) this.memory.grow(Math.ceil((this.end - have) / 65536));
    }
    this.live.set(at, byteLength);
    const buffer = this.memory.buffer;
    this.buffers.add(buffer);
    return new Uint8Array(buffer, at, byteLength);
  }

  /** Whether `view` is one of this arena's live buffers, whole. */
  owns(view: Uint8Array): boolean {
    return this.buffers.has(view.buffer) && this.live.get(view.byteOffset) === view.byteLength;
  }

  /** Gives a buffer back for the next request of its size; false (and nothing done) if it is not a live buffer of this arena. */
  release(view: Uint8Array): boolean {
    if (!this.owns(view)) return false;
    this.live.delete(view.byteOffset);
    let list = this.free.get(view.byteLength);
    if (!list) this.free.set(view.byteLength, (list = []));
    list.push(view.byteOffset);
    return true;
  }

  /** The end of the highest buffer ever given (the pool places its copies above it). */
  get top(): number {
    return this.end;
  }

  /** While a batch's copies occupy [top, end), new buffers start at or above `end`; 0 lifts it. */
  setFloor(end: number): void {
    this.floor = end;
  }

  /** Bytes between the arena's start and its top. */
  get used(): number {
    return this.end - align(this.start);
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
