/** An onnxruntime output tensor's values as float32 (float16 bit patterns decoded). */
import { GraphError } from "../errors.js";
import { halfToFloatTable } from "../onnx/dtype.js";

export function ortFloats(t: { type: string; data: unknown }, subject: string): Float32Array {
  if (t.type === "float32") return t.data as Float32Array;
  if (t.type === "float16") {
    const table = halfToFloatTable();
    return Float32Array.from(t.data as Uint16Array, (h) => table[h]!);
  }
  throw new GraphError(subject, `expected a float32 or float16 tensor, got ${t.type}`);
}
