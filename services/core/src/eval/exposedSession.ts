/**
 * A full decoder opened with some intermediate tensors as extra outputs (the block boundaries).
 * onnxruntime resolves external data (symbolic links included) only inside the model's own
 * folder, so the edited model is written there under a hidden temporary name, loaded, and
 * removed as soon as the session exists (the weights are read at load time).
 */
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import type * as Ort from "onnxruntime-node";
import { ModelProtoSchema, ValueInfoProtoSchema } from "../../../gen/onnx_pb.js";
import { RuntimeError } from "../errors.js";
import type { LoadedModel } from "../onnx/modelFile.js";

export async function openExposed(ort: typeof Ort, loaded: LoadedModel, extraOutputs: readonly string[], threads: number): Promise<Ort.InferenceSession> {
  const model = structuredClone(loaded.model);
  const graph = model.graph!;
  const existing = new Set(graph.output.map((o) => o.name));
  for (const name of extraOutputs) if (!existing.has(name)) graph.output.push(create(ValueInfoProtoSchema, { name }));
  const path = join(loaded.dir, `.atvp-eval-${process.pid}-${Math.random().toString(36).slice(2)}.onnx`);
  try {
    writeFileSync(path, toBinary(ModelProtoSchema, model));
  } catch (err) {
    throw new RuntimeError(loaded.dir, `cannot write the temporary evaluation model beside ${loaded.path} (${(err as Error).message}); eval needs write access to the model's folder`, { cause: err });
  }
  try {
    return await ort.InferenceSession.create(path, { executionProviders: ["cpu"], intraOpNumThreads: threads, logSeverityLevel: 3 });
  } catch (err) {
    throw new RuntimeError(loaded.path, `onnxruntime could not load the model: ${(err as Error).message}`, { cause: err });
  } finally {
    rmSync(path, { force: true });
  }
}
