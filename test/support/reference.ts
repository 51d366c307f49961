// An independent, slow reference for DESIGN.md §2: activations come from the FULL model run by
// onnxruntime with the needed tensors exposed as extra outputs (no block cutting), statistics
// are summed in plain loops, and masks come from a stable sort per column.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { ortTensor, tensorBits } from "../../services/core/src/runtime/ortTensor.js";
import { ModelProtoSchema, ValueInfoProtoSchema } from "../../services/gen/onnx_pb.js";
import { halfToFloatTable } from "../../services/core/src/onnx/dtype.js";
import type { CalibSample } from "../../services/core/src/calib/calibSet.js";
import { SampleFeeds } from "../../services/core/src/pipeline/sampleFeeds.js";
import { indexGraph } from "../../services/core/src/graph/graphIndex.js";
import { readModel } from "../../services/core/src/onnx/modelFile.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { toFloat32 } from "../../services/core/src/onnx/dtype.js";

export function toFloats(t: ort.Tensor): Float32Array {
  if (t.type === "float16") {
    const table = halfToFloatTable();
    return Float32Array.from(tensorBits(t) as Uint16Array, (h) => table[h]!);
  }
  return t.data as Float32Array;
}

/** Runs the whole model on each sample and returns the named intermediate tensors as floats. */
export async function runExposed(modelPath: string, names: string[], samples: readonly CalibSample[], mainInput: string): Promise<Map<string, Float32Array>[]> {
  const model = fromBinary(ModelProtoSchema, readFileSync(modelPath));
  const graph = model.graph!;
  for (const name of names) if (!graph.output.some((o) => o.name === name)) graph.output.push(create(ValueInfoProtoSchema, { name }));
  const exposed = join(dirname(modelPath), "reference-exposed.onnx");
  writeFileSync(exposed, toBinary(ModelProtoSchema, model));
  const session = await ort.InferenceSession.create(exposed);
  const index = indexGraph(graph, modelPath);
  const results: Map<string, Float32Array>[] = [];
  for (const s of samples) {
    const feeds = new SampleFeeds(s, mainInput, index.inputs);
    const inputs: Record<string, ort.Tensor> = {};
    for (const name of session.inputNames) {
      const t = feeds.get(name);
      inputs[name] = ortTensor(t.type, t.data, t.dims);
    }
    const out = await session.run(inputs, names);
    results.push(new Map(names.map((n) => [n, toFloats(out[n]!)])));
  }
  await session.release();
  return results;
}

/** s[c] = (1/N) sum_j sum_{t in pool_j} a_j[t, c]^2, samples then tokens in order. */
export function referenceScale(acts: Float32Array[], pools: Uint8Array[], channels: number): Float64Array {
  const sum = new Float64Array(channels);
  acts.forEach((a, j) => {
    const pool = pools[j]!;
    for (let t = 0; t < pool.length; t++) {
      if (!pool[t]) continue;
      for (let c = 0; c < channels; c++) sum[c]! += a[t * channels + c]! * a[t * channels + c]!;
    }
  });
  return sum.map((v) => v / acts.length);
}

/** Per output column of an [in, out] weight: the floor(in*s) smallest |W|*sqrt(s), ties to the lower index. */
export function referenceMask(w: Float32Array, inDim: number, outDim: number, scale: Float64Array | null, sparsity: number): Uint8Array {
  const mask = new Uint8Array(inDim * outDim);
  const k = Math.floor(inDim * sparsity);
  for (let o = 0; o < outDim; o++) {
    const col = Array.from({ length: inDim }, (_, c) => ({ c, m: Math.abs(w[c * outDim + o]!) * (scale ? Math.sqrt(scale[c]!) : 1) }));
    col.sort((a, b) => a.m - b.m || a.c - b.c);
    for (let i = 0; i < k; i++) mask[col[i]!.c * outDim + o] = 1;
  }
  return mask;
}

/** d_t = 1 - cos(x_t, y_t) with the hidden states given as sums of parts. */
export function referenceDistances(x: Float32Array[], y: Float32Array[], tokens: number, hidden: number): Float64Array {
  const d = new Float64Array(tokens);
  for (let t = 0; t < tokens; t++) {
    let dot = 0, nx = 0, ny = 0;
    for (let c = 0; c < hidden; c++) {
      const a = x.reduce((s, p) => s + p[t * hidden + c]!, 0);
      const b = y.reduce((s, p) => s + p[t * hidden + c]!, 0);
      dot += a * b; nx += a * a; ny += b * b;
    }
    d[t] = 1 - dot / (Math.sqrt(nx) * Math.sqrt(ny));
  }
  return d;
}

/** Every 2-D initializer of a model file, as float32 values. */
export async function modelWeights(model: string): Promise<Map<string, Float32Array>> {
  const loaded = readModel(model);
  const data = new TensorData(loaded);
  const out = new Map<string, Float32Array>();
  for (const t of loaded.model.graph!.initializer) if (t.dims.length === 2) out.set(t.name, toFloat32(await data.read(t), t.dataType, t.name));
  await data.close();
  return out;
}
