/**
 * Finds the prunable linears of a graph: MatMul / Gemm nodes whose weight (input B) is a 2-D
 * float initializer, normalized to the (in, out) view the metric and masks work on.
 */
import type { NodeProto } from "../../../gen/onnx_pb.js";
import { OnnxDataType as DT } from "../onnx/dtype.js";

// Weight types a MatMul/Gemm on the hidden path may carry; only float ones can be pruned, the
// others are reported (UnsupportedTypeError) instead of silently left dense.
const NUMERIC_WEIGHT_TYPES: ReadonlySet<number> = new Set([DT.FLOAT, DT.FLOAT16, DT.BFLOAT16, DT.DOUBLE, DT.INT8, DT.UINT8, DT.INT32]);
import { attributeInt, nodeLabel, type GraphIndex } from "./graphIndex.js";

export interface LinearInfo {
  /** node index in the graph */
  nodeIndex: number;
  /** node name (or a label when the export left it empty) */
  node: string;
  op: "MatMul" | "Gemm";
  /** initializer name of the weight */
  weight: string;
  /** the activation tensor multiplied by the weight */
  activation: string;
  dataType: number;
  /** "in_out": stored [in, out] (MatMul B); "out_in": stored [out, in] (Gemm with transB=1) */
  layout: "in_out" | "out_in";
  inDim: number;
  outDim: number;
}

export function findLinears(index: GraphIndex): LinearInfo[] {
  const found: LinearInfo[] = [];
  index.nodes.forEach((node, nodeIndex) => {
    const info = asLinear(index, node, nodeIndex);
    if (info) found.push(info);
  });
  return found;
}

function asLinear(index: GraphIndex, node: NodeProto, nodeIndex: number): LinearInfo | undefined {
  if (node.domain !== "" && node.domain !== "ai.onnx") return undefined;
  if (node.opType !== "MatMul" && node.opType !== "Gemm") return undefined;
  const [activation, weightName] = node.input;
  if (!activation || !weightName) return undefined;
  const weight = index.initializers.get(weightName);
  if (!weight || weight.dims.length !== 2 || !NUMERIC_WEIGHT_TYPES.has(weight.dataType)) return undefined;
  // A weight shared by several nodes (tied) would get several masks: leave it alone.
  if ((index.consumers.get(weightName) ?? []).length !== 1) return undefined;
  let layout: LinearInfo["layout"] = "in_out";
  if (node.opType === "Gemm") {
    if (attributeInt(node, "transA", 0) !== 0) return undefined;
    if (attributeInt(node, "transB", 0) !== 0) layout = "out_in";
  }
  const [d0, d1] = weight.dims.map(Number) as [number, number];
  return {
    nodeIndex,
    node: nodeLabel(node),
    op: node.opType,
    weight: weightName,
    activation,
    dataType: weight.dataType,
    layout,
    inDim: layout === "in_out" ? d0 : d1,
    outDim: layout === "in_out" ? d1 : d0,
  };
}
