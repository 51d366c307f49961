/**
 * `--stats graph`: the statistics of DESIGN.md §2 steps 2-3 computed inside the block's own ONNX
 * graph, so that only small vectors leave onnxruntime instead of whole activations (on a GPU
 * the activation copy dominates). Added to a cut model (graph/blockCut.ts):
 *
 * - per activation A `[.., T, in]`: `Σ_t pool[t] · A[t, c]²` as an `[in]` float64 output, over
 *   a pool mask input `[T]` (float, 1 for pooled tokens). Runs that do not ask for the sums (the
 *   pruned forward) feed NO_POOL, a single 0 that broadcasts over any T (onnxruntime-node feeds
 *   only required inputs, so the input cannot have a default initializer);
 * - with `distance`: ATV's `d_t = 1 − cos(X[t], Y[t])` per token as a `[T]` float64 output, X and
 *   Y the block's input and output hidden states (the sum of the parts of a (residual, delta)
 *   pair), as prune/hiddenState.ts computes them.
 *
 * Everything runs in float64: the square of a float32 or float16 value is exact there, so a
 * sample's vector is what the host computes for it up to the order of float64 additions
 * (onnxruntime's CPU ReduceSum over the leading axis is a product with a ones vector, whose
 * order is fixed by the kernel's blocking, not by the data or the thread count).
 */
import { create } from "@bufbuild/protobuf";
import {
  AttributeProto_AttributeType, AttributeProtoSchema, NodeProtoSchema, TensorProtoSchema, type ModelProto, type NodeProto, type TensorProto,
} from "../../../gen/onnx_pb.js";
import { GraphError } from "../errors.js";
import { OnnxDataType as DT } from "../onnx/dtype.js";
import { valueInfo } from "../onnx/valueInfo.js";
import type { WireTensor } from "../runtime/wireTensor.js";

const PREFIX = "atvp_stats";
/** The pool mask input `[T]` (float32, 1 for the tokens that count). */
export const STATS_POOL_INPUT = `${PREFIX}/pool`;
/** The pool fed to runs that read no sums. */
export const NO_POOL: WireTensor = { type: "float32", dims: [1], data: new Float32Array(1) };

export interface StatsGraph {
  /** per activation tensor: its channel count and the output holding its pooled sums of squares */
  sums: { activation: string; channels: number; output: string }[];
  /** ATV: the boundary tensors before (x) and after (y) the block, and the output of d_t */
  distance?: { x: readonly string[]; y: readonly string[]; output: string };
}

/** The outputs --stats graph adds for `activations` (and the cosine distance when `boundary` is given). */
export function planStatsGraph(activations: readonly { name: string; channels: number }[], boundary?: { x: readonly string[]; y: readonly string[] }): StatsGraph {
  return {
    sums: activations.map((a, i) => ({ activation: a.name, channels: a.channels, output: `${PREFIX}/sum_squares_${i}` })),
    ...(boundary ? { distance: { ...boundary, output: `${PREFIX}/cos_distance` } } : {}),
  };
}

/**
 * Adds the nodes, the pool input and the outputs of `stats` to a cut model (in place). Every
 * tensor they read must be an input or a node output of the cut: a boundary tensor the block
 * only carries over is not, and is refused (host statistics handle it).
 */
export function addStatsOutputs(model: ModelProto, stats: StatsGraph, subject: string): ModelProto {
  const graph = model.graph!;
  const available = new Set([...graph.input.map((v) => v.name), ...graph.node.flatMap((n) => n.output)]);
  for (const t of [...stats.sums.map((s) => s.activation), ...(stats.distance ? [...stats.distance.x, ...stats.distance.y] : [])]) {
    if (!available.has(t)) throw new GraphError(subject, `--stats graph needs ${t} inside the block's graph, which does not compute or take it; use --stats host`);
  }
  const opset = Number(model.opsetImport.find((o) => o.domain === "" || o.domain === "ai.onnx")?.version ?? 0n);
  const b = new StatsNodes(graph.node, graph.initializer, opset);
  graph.input.push(valueInfo(STATS_POOL_INPUT, DT.FLOAT, ["atvp_tokens"]));
  if (stats.sums.length > 0) {
    const poolColumn = b.op("Reshape", [b.op("Cast", [STATS_POOL_INPUT], { to: DT.DOUBLE }), b.int64s("column", [-1, 1])]);
    for (const s of stats.sums) {
      const rows = b.op("Reshape", [b.op("Cast", [s.activation], { to: DT.DOUBLE }), b.int64s(`rows_${s.channels}`, [-1, s.channels])]);
      const pooled = b.op("Mul", [b.op("Mul", [rows, rows]), poolColumn]);
      b.reduceSum(pooled, 0, s.output);
      graph.output.push(valueInfo(s.output, DT.DOUBLE, [s.channels]));
    }
  }
  if (stats.distance) {
    const { x, y, output } = stats.distance;
    const hx = b.hidden(x);
    const hy = b.hidden(y);
    const dot = b.reduceSum(b.op("Mul", [hx, hy]), -1);
    const norms = b.op("Mul", [b.op("Sqrt", [b.reduceSum(b.op("Mul", [hx, hx]), -1)]), b.op("Sqrt", [b.reduceSum(b.op("Mul", [hy, hy]), -1)])]);
    // A zero vector has cosine 0 (hiddenState.ts): dot is 0 then, and 0 / MIN_VALUE is 0.
    const cos = b.op("Div", [dot, b.op("Max", [norms, b.float64("tiny", Number.MIN_VALUE)])]);
    b.op("Reshape", [b.op("Sub", [b.float64("one", 1), cos]), b.int64s("flat", [-1])], {}, output);
    graph.output.push(valueInfo(output, DT.DOUBLE, ["atvp_tokens"]));
  }
  return model;
}

type AttrValue = number | readonly number[];

/** Appends named nodes and constants to a graph under the atvp_stats/ prefix. */
class StatsNodes {
  private count = 0;
  private readonly constants = new Set<string>();

  constructor(private readonly nodes: NodeProto[], private readonly initializers: TensorProto[], private readonly opset: number) {}

  op(opType: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}, output?: string): string {
    const name = `${PREFIX}/${opType}_${this.count++}`;
    const out = output ?? `${name}_output`;
    this.nodes.push(create(NodeProtoSchema, {
      name, opType, input: [...inputs], output: [out],
      attribute: Object.entries(attrs).map(([key, v]) => typeof v === "number"
        ? create(AttributeProtoSchema, { name: key, type: AttributeProto_AttributeType.INT, i: BigInt(v) })
        : create(AttributeProtoSchema, { name: key, type: AttributeProto_AttributeType.INTS, ints: v.map(BigInt) })),
    }));
    return out;
  }

  /** ReduceSum over one axis, dropping it (axes became an input in opset 13). */
  reduceSum(input: string, axis: number, output?: string): string {
    return this.opset >= 13
      ? this.op("ReduceSum", [input, this.int64s(`axis_${axis}`, [axis])], { keepdims: 0 }, output)
      : this.op("ReduceSum", [input], { axes: [axis], keepdims: 0 }, output);
  }

  /** The hidden state in float64: the one boundary tensor, or the sum of its parts. */
  hidden(parts: readonly string[]): string {
    return parts.map((p) => this.op("Cast", [p], { to: DT.DOUBLE })).reduce((sum, p) => this.op("Add", [sum, p]));
  }

  int64s(key: string, values: readonly number[]): string {
    const bytes = new Uint8Array(new BigInt64Array(values.map(BigInt)).buffer);
    return this.constant(key, DT.INT64, [values.length], bytes);
  }

  float64(key: string, value: number): string {
    return this.constant(key, DT.DOUBLE, [], new Uint8Array(new Float64Array([value]).buffer));
  }

  private constant(key: string, dataType: number, dims: readonly number[], rawData: Uint8Array): string {
    const name = `${PREFIX}/const_${key}`;
    if (!this.constants.has(name)) {
      this.constants.add(name);
      this.initializers.push(create(TensorProtoSchema, { name, dims: dims.map(BigInt), dataType, rawData }));
    }
    return name;
  }
}
