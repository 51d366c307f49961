/**
 * The plain tensor shape that crosses thread (and later process) boundaries: a type name, dims
 * and a typed array. onnxruntime Tensor objects stay inside the inference thread.
 */
import type { OrtType } from "../onnx/dtype.js";

export type TensorData = Float32Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array | Int8Array | Float64Array;

export interface WireTensor {
  type: OrtType;
  dims: number[];
  data: TensorData;
}

export function elementCount(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}
