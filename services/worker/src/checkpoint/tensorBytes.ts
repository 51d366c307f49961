/**
 * Boundary-state tensors as raw bytes and back. Checkpoint files and the data plane both carry a
 * tensor as (type, dims, little-endian bytes); this is the one place that maps onnxruntime type
 * names to typed arrays, so a state read back is the same tensor, bit for bit.
 */
import type { OrtType, WireTensorData as TensorData, WireTensor } from "../../../core/src/index.js";

type TypedCtor = { new (buffer: ArrayBuffer, byteOffset: number, length: number): TensorData; BYTES_PER_ELEMENT: number };

const CTORS: Record<OrtType, TypedCtor> = {
  float32: Float32Array,
  float16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  bool: Uint8Array,
  uint8: Uint8Array,
  int8: Int8Array,
  float64: Float64Array,
};

export function isOrtType(type: string): type is OrtType {
  return Object.prototype.hasOwnProperty.call(CTORS, type);
}

/** Bytes a tensor of this type and shape holds, or undefined for an unknown type or bad dims. */
export function expectedBytes(type: string, dims: readonly number[]): number | undefined {
  if (!isOrtType(type)) return undefined;
  let n = 1;
  for (const d of dims) {
    if (!Number.isSafeInteger(d) || d < 0) return undefined;
    n *= d;
  }
  return n * CTORS[type].BYTES_PER_ELEMENT;
}

/** A view of the tensor's bytes (no copy). */
export function bytesOf(t: WireTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/** A tensor over a whole buffer that holds exactly its bytes (checked by the caller). */
export function tensorOver(type: OrtType, dims: number[], buffer: ArrayBuffer): WireTensor {
  const ctor = CTORS[type];
  return { type, dims, data: new ctor(buffer, 0, buffer.byteLength / ctor.BYTES_PER_ELEMENT) };
}
