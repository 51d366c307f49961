/**
 * Writes the LLaVA-style language-model decoder (model.onnx + model.onnx.data) in the requested
 * flavour; the graph itself is built by unfusedDecoder.ts or fusedDecoder.ts.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../../../gen/onnx_pb.js";
import { InvalidArgumentError } from "../errors.js";
import { OnnxDataType } from "../onnx/dtype.js";
import type { DecoderConfig } from "./config.js";
import { buildFusedDecoder, MS_DOMAIN } from "./fusedDecoder.js";
import { GraphBuilder } from "./graphBuilder.js";
import { buildUnfusedDecoder } from "./unfusedDecoder.js";
import { ExternalDataWriter } from "./weightStore.js";

export const MODEL_FILE = "model.onnx";
export const DATA_FILE = "model.onnx.data";

export interface WrittenDecoder {
  modelPath: string;
  dataPath: string;
  /** Bytes of weight data in the data file (alignment gaps not counted). */
  weightBytes: number;
  dataFileBytes: number;
  /** Initializer names of the MatMul weights, lm_head last. */
  linearWeights: string[];
  inputNames: string[];
  outputNames: string[];
}

/** `files` names the model and its data file (model.onnx, model.onnx.data by default). */
export function writeDecoder(cfg: DecoderConfig, outDir: string, files: { model: string; data: string } = { model: MODEL_FILE, data: DATA_FILE }): WrittenDecoder {
  const modelPath = join(outDir, files.model);
  const dataPath = join(outDir, files.data);
  const floatType = cfg.fp16 ? OnnxDataType.FLOAT16 : OnnxDataType.FLOAT;
  const store = new ExternalDataWriter(dataPath, files.data, floatType);
  let linearWeights: string[];
  let builder: GraphBuilder;
  try {
    builder = new GraphBuilder(store, floatType, cfg.fused ? "genai" : "torch", cfg.nodeNames === "none");
    linearWeights = (cfg.fused ? buildFusedDecoder(builder, cfg) : buildUnfusedDecoder(builder, cfg)).linears;
  } finally {
    store.close();
  }
  const opsets = [{ domain: "", version: 17 }];
  if (cfg.fused) opsets.push({ domain: MS_DOMAIN, version: 1 });
  const model = builder.toModel({
    graphName: "main_graph",
    irVersion: 8,
    opsets,
    docString: `atv-prune test decoder: ${JSON.stringify(cfg)}`,
  });
  try {
    writeFileSync(modelPath, toBinary(ModelProtoSchema, model));
  } catch (err) {
    throw new InvalidArgumentError(modelPath, `cannot write model (${(err as Error).message})`);
  }
  const graph = model.graph!;
  return {
    modelPath,
    dataPath,
    weightBytes: store.payloadBytes,
    dataFileBytes: store.fileBytes,
    linearWeights,
    inputNames: graph.input.map((i) => i.name),
    outputNames: graph.output.map((o) => o.name),
  };
}
