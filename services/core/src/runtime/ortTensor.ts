/**
 * The one way this project builds onnxruntime tensors. float16 data is Uint16Array bits here.
 * On runtimes with a global Float16Array (Node >= 24), onnxruntime-common re-views such data as
 * a Float16Array, whose byte length onnxruntime-node 1.30's binding reads as 0 ("not enough
 * space: expected N, got 0", microsoft/onnxruntime#32323). The tensor keeps the Uint16Array view
 * of the same bytes instead, which every binding version accepts for float16.
 */
import * as ort from "onnxruntime-node";
import type { OrtType } from "../onnx/dtype.js";
import type { TensorData } from "./wireTensor.js";

export function ortTensor(type: OrtType, data: TensorData, dims: readonly number[]): ort.Tensor {
  const tensor = new ort.Tensor(type, data as never, dims);
  if (type === "float16" && data instanceof Uint16Array && !(tensor.data instanceof Uint16Array)) {
    (tensor as unknown as { cpuData: Uint16Array }).cpuData = data;
  }
  return tensor;
}

/** float16 outputs as Uint16Array bits, whatever view onnxruntime returned. */
export function tensorBits(t: ort.Tensor): TensorData {
  const data = t.data as ArrayBufferView;
  if (t.type === "float16" && !(data instanceof Uint16Array)) {
    return new Uint16Array(data.buffer, data.byteOffset, data.byteLength / 2);
  }
  return data as TensorData;
}
