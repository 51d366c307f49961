/**
 * Copies runs of bytes between two views, at memcpy speed whether or not either lies in shared
 * memory. TypedArray.prototype.set into or out of a SharedArrayBuffer takes V8's relaxed-atomic
 * copy, about twice as slow for the few-KiB runs that row-by-row copies make (bench/maskBench.ts
 * `mask_row_copy_set_over_buffer_copy`); Node's Buffer.copy is a plain memmove either way. Between
 * two ordinary buffers set is as fast and is kept.
 */
export type RunCopy = (from: number, to: number, length: number) => void;

/** A copier of runs from src[from, from + length) to dst[to, to + length); a run that does not fit throws RangeError. */
export function runCopier(src: Uint8Array, dst: Uint8Array): RunCopy {
  const check = (from: number, to: number, length: number) => {
    // (subarray and Buffer.copy would clip such a run silently)
    if (!(from >= 0 && to >= 0 && length >= 0 && from + length <= src.length && to + length <= dst.length)) {
      throw new RangeError(`a run of ${length} bytes from ${from} to ${to} is out of bounds (${src.length} -> ${dst.length} bytes)`);
    }
  };
  if (!(src.buffer instanceof SharedArrayBuffer) && !(dst.buffer instanceof SharedArrayBuffer)) {
    return (from, to, length) => {
      check(from, to, length);
      dst.set(src.subarray(from, from + length), to);
    };
  }
  const source = Buffer.from(src.buffer, src.byteOffset, src.byteLength);
  const target = Buffer.from(dst.buffer, dst.byteOffset, dst.byteLength);
  return (from, to, length) => {
    check(from, to, length);
    source.copy(target, to, from, from + length);
  };
}
