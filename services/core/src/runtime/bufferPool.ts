/**
 * Reuses weight buffers from block to block: decoder blocks have the same shapes, so the next
 * block reads into the previous block's buffers instead of waiting for the garbage collector to
 * free them (which would briefly keep two blocks' weights in memory).
 */
export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();

  acquire(byteLength: number): ArrayBuffer {
    const list = this.free.get(byteLength);
    return list?.pop() ?? new ArrayBuffer(byteLength);
  }

  release(buffer: ArrayBuffer): void {
    if (buffer.byteLength === 0) return; // detached: it moved elsewhere
    let list = this.free.get(buffer.byteLength);
    if (!list) this.free.set(buffer.byteLength, (list = []));
    if (!list.includes(buffer)) list.push(buffer);
  }
}
