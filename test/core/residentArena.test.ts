/**
 * The mask pool's weight buffers (prune/residentArena.ts), by hand on a small shared memory:
 * aligned places from the start, a freed buffer given again for its exact size only, the limit,
 * what it owns, and the floor that keeps new buffers above a batch's copies.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { ResidentArena } from "../../services/core/src/prune/residentArena.js";
import { sharedKernelMemory } from "../../services/core/src/prune/maskKernelWasm.js";

const START = 1000; // not aligned: the first buffer starts at 1024

describe("ResidentArena", () => {
  test("buffers in the memory, 64-byte aligned from the start, one after another; the memory grows", () => {
    const memory = sharedKernelMemory(65536);
    const arena = new ResidentArena(memory, START, 1 << 20);
    const a = arena.acquire(100)!;
    const b = arena.acquire(70_000)!;
    assert.equal(a.byteOffset, 1024);
    assert.equal(a.byteLength, 100);
    assert.equal(b.byteOffset, 1024 + 128);
    assert.ok(a.buffer instanceof SharedArrayBuffer);
    assert.ok(memory.buffer.byteLength >= 1024 + 128 + 70_000, "grown to hold b");
    assert.equal(arena.top, 1024 + 128 + 70_016);
    assert.equal(arena.used, 128 + 70_016);
    // The bytes are the memory's: what a kernel at that address would read.
    b.fill(7, 0, 3);
    assert.deepEqual([...new Uint8Array(memory.buffer, b.byteOffset, 3)], [7, 7, 7]);
  });

  test("a freed buffer comes back for its exact size only; others come from the top", () => {
    const arena = new ResidentArena(sharedKernelMemory(65536), START, 1 << 20);
    const a = arena.acquire(256)!;
    const b = arena.acquire(512)!;
    assert.equal(arena.release(a), true);
    assert.equal(arena.release(a), false, "not live any more");
    const c = arena.acquire(300)!;
    assert.equal(c.byteOffset, b.byteOffset + 512, "a different size: from the top");
    const d = arena.acquire(256)!;
    assert.equal(d.byteOffset, a.byteOffset, "the same size: a's place");
    assert.equal(arena.top, c.byteOffset + 320);
  });

  test("past the limit: null, nothing taken; a size that is not a positive integer: null", () => {
    const arena = new ResidentArena(sharedKernelMemory(65536), START, 4096);
    assert.equal(arena.acquire(4096 - 1024 + 1), null);
    assert.equal(arena.top, 1024);
    assert.ok(arena.acquire(4096 - 1024));
    assert.equal(arena.acquire(1), null);
    for (const n of [0, -1, 1.5, NaN]) assert.equal(arena.acquire(n), null, String(n));
  });

  test("owns its live buffers, whole: not a part of one, not another buffer's bytes", () => {
    const memory = sharedKernelMemory(65536);
    const arena = new ResidentArena(memory, START, 1 << 20);
    const a = arena.acquire(128)!;
    assert.equal(arena.owns(a), true);
    assert.equal(arena.owns(a.subarray(0, 64)), false);
    assert.equal(arena.owns(new Uint8Array(128)), false);
    assert.equal(arena.owns(new Uint8Array(new SharedArrayBuffer(2048), 1024, 128)), false, "same place, another memory");
    assert.equal(arena.release(new Uint8Array(128)), false);
    // A view made after the memory grew (a new SharedArrayBuffer object) is still known.
    arena.acquire(200_000);
    const late = arena.acquire(64)!;
    assert.notEqual(late.buffer, a.buffer);
    assert.equal(arena.owns(late), true);
    assert.equal(arena.owns(a), true);
  });

  test("while a batch's copies lie above the top, new buffers start above them; freed places below stay usable", () => {
    const arena = new ResidentArena(sharedKernelMemory(65536), START, 1 << 20);
    const a = arena.acquire(256)!;
    arena.release(a);
    arena.setFloor(50_000);
    const above = arena.acquire(100)!;
    assert.ok(above.byteOffset >= 50_000, String(above.byteOffset));
    assert.equal(arena.acquire(256)!.byteOffset, a.byteOffset);
    arena.setFloor(0);
    assert.equal(arena.acquire(64)!.byteOffset, above.byteOffset + 128, "after the batch: from the top again");
  });
});
