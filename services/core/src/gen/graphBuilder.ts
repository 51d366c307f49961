/**
 * A small ONNX graph builder for the generator: it names nodes and their outputs the way the
 * exporters being imitated do (torch.onnx or the onnxruntime-genai builder), deduplicates small
 * constants, and routes every float initializer bigger than 64 bytes to the external-data writer.
 */
import { valueInfo, type Dim } from "../onnx/valueInfo.js";
import { create } from "@bufbuild/protobuf";
import {
  AttributeProto_AttributeType,
  AttributeProtoSchema,
  GraphProtoSchema,
  ModelProtoSchema,
  NodeProtoSchema,
  OperatorSetIdProtoSchema,
  TensorProtoSchema,
  TensorShapeProto_DimensionSchema,
  TensorShapeProtoSchema,
  TypeProto_TensorSchema,
  TypeProtoSchema,
  ValueInfoProtoSchema,
  type AttributeProto,
  type ModelProto,
  type NodeProto,
  type TensorProto,
  type ValueInfoProto,
} from "../../../gen/onnx_pb.js";
import { GraphError } from "../errors.js";
import { floatToHalf, OnnxDataType } from "../onnx/dtype.js";
import type { ExternalDataWriter, FloatType, TensorFill } from "./weightStore.js";

export type Attr =
  | { int: number }
  | { float: number }
  | { ints: readonly number[] }
  | { str: string }
  | { tensor: TensorProto };

/** How output tensors are named after their node, per exporter. */
export type OutputNaming = "torch" | "genai";

export interface NodeOptions {
  /** Module path the node belongs to, e.g. "/model/layers.0/self_attn". */
  scope: string;
  /** Last name component instead of the op type (the genai builder's "LayerNorm", ...). */
  base?: string;
  domain?: string;
  attrs?: Record<string, Attr>;
  /** Explicit output names ("" for an omitted optional output), or how many to generate. */
  outputs?: readonly string[] | number;
}

/** A dimension: a fixed size or a symbolic name. */
export type { Dim };
export { valueInfo };

/** Largest initializer (in bytes) that is stored inline in the model rather than externally. */
export const INLINE_LIMIT = 64;

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly nameCounts = new Map<string, number>();
  private readonly constants = new Map<string, string>();
  private readonly initNames = new Set<string>();

  constructor(
    private readonly store: ExternalDataWriter,
    readonly floatType: FloatType,
    private readonly naming: OutputNaming,
    /** Leave every node name empty (the outputs keep their derived names). */
    private readonly emptyNodeNames: boolean,
  ) {}

  input(name: string, elemType: number, dims: readonly Dim[]): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, elemType: number, dims: readonly Dim[]): void {
    this.outputs.push(valueInfo(name, elemType, dims));
  }

  /** Adds a node; returns its output tensor names. */
  node(op: string, inputs: readonly string[], options: NodeOptions): string[] {
    const stem = `${options.scope}/${options.base ?? op}`;
    const seen = this.nameCounts.get(stem) ?? 0;
    this.nameCounts.set(stem, seen + 1);
    const name = seen === 0 ? stem : `${stem}_${seen}`;
    const outs = typeof options.outputs === "object"
      ? [...options.outputs]
      : Array.from({ length: options.outputs ?? 1 }, (_, i) => this.outputName(name, i));
    this.nodes.push(create(NodeProtoSchema, {
      name: this.emptyNodeNames ? "" : name,
      opType: op,
      domain: options.domain ?? "",
      input: [...inputs],
      output: outs,
      attribute: Object.entries(options.attrs ?? {}).map(([k, v]) => attribute(k, v)),
    }));
    return outs;
  }

  /** Like node() for single-output ops. */
  op(op: string, inputs: readonly string[], options: NodeOptions): string {
    return this.node(op, inputs, options)[0]!;
  }

  private outputName(nodeName: string, index: number): string {
    return this.naming === "torch" ? `${nodeName}_output_${index}` : `${nodeName}/output_${index}`;
  }

  /** A float initializer in the model's float type; large ones stream to external data. */
  floatWeight(name: string, dims: readonly number[], fill: TensorFill): string {
    this.claim(name);
    const count = dims.reduce((a, b) => a * b, 1);
    if (count * this.store.elementBytes > INLINE_LIMIT) {
      this.initializers.push(this.store.add(name, dims, fill));
    } else {
      const values = new Float32Array(count);
      fill(values, 0, count);
      this.initializers.push(inlineFloat(name, dims, values, this.floatType));
    }
    return name;
  }

  /** A deduplicated int64 constant (1-D, or 0-D when scalar). */
  int64(values: readonly number[], scalar = false): string {
    if (scalar && values.length !== 1) throw new GraphError("int64 constant", "a scalar needs exactly one value");
    const key = `/model/constants/INT64/${scalar ? "0D" : "1D"}/${values.join(",")}`;
    return this.constant(key, () => {
      const raw = new Uint8Array(values.length * 8);
      const view = new DataView(raw.buffer);
      values.forEach((v, i) => view.setBigInt64(i * 8, BigInt(v), true));
      return create(TensorProtoSchema, {
        name: key,
        dims: scalar ? [] : [BigInt(values.length)],
        dataType: OnnxDataType.INT64,
        rawData: raw,
      });
    });
  }

  /** A deduplicated float scalar, in the model's float type unless `type` says otherwise. */
  scalar(value: number, type: FloatType = this.floatType): string {
    const key = `/model/constants/${type === OnnxDataType.FLOAT16 ? "FLOAT16" : "FLOAT"}/0D/${value}`;
    return this.constant(key, () => inlineFloat(key, [], Float32Array.of(value), type));
  }

  private constant(key: string, make: () => TensorProto): string {
    const existing = this.constants.get(key);
    if (existing !== undefined) return existing;
    this.claim(key);
    this.initializers.push(make());
    this.constants.set(key, key);
    return key;
  }

  private claim(name: string): void {
    if (this.initNames.has(name)) throw new GraphError(name, "initializer name used twice");
    this.initNames.add(name);
  }

  toModel(options: { graphName: string; opsets: ReadonlyArray<{ domain: string; version: number }>; irVersion: number; docString?: string }): ModelProto {
    return create(ModelProtoSchema, {
      irVersion: BigInt(options.irVersion),
      producerName: "atv-prune gen-model",
      producerVersion: "0.1.0",
      docString: options.docString ?? "",
      opsetImport: options.opsets.map((o) => create(OperatorSetIdProtoSchema, { domain: o.domain, version: BigInt(o.version) })),
      graph: create(GraphProtoSchema, {
        name: options.graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      }),
    });
  }
}

function inlineFloat(name: string, dims: readonly number[], values: Float32Array, type: FloatType): TensorProto {
  let raw: Uint8Array;
  if (type === OnnxDataType.FLOAT16) {
    const halves = Uint16Array.from(values, (v) => floatToHalf(v));
    raw = new Uint8Array(halves.buffer);
  } else {
    raw = new Uint8Array(values.slice().buffer);
  }
  return create(TensorProtoSchema, { name, dims: dims.map((d) => BigInt(d)), dataType: type, rawData: raw });
}

function attribute(name: string, value: Attr): AttributeProto {
  const T = AttributeProto_AttributeType;
  if ("int" in value) return create(AttributeProtoSchema, { name, type: T.INT, i: BigInt(value.int) });
  if ("float" in value) return create(AttributeProtoSchema, { name, type: T.FLOAT, f: value.float });
  if ("ints" in value) return create(AttributeProtoSchema, { name, type: T.INTS, ints: value.ints.map((v) => BigInt(v)) });
  if ("str" in value) return create(AttributeProtoSchema, { name, type: T.STRING, s: new TextEncoder().encode(value.str) });
  return create(AttributeProtoSchema, { name, type: T.TENSOR, t: value.tensor });
}

