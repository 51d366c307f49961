/**
 * Tensors inside a block that a method may read besides the linears' inputs (METHODS.md §3,
 * TAMP): a linear's output and the self-attention probabilities. The block cut exposes them as
 * extra graph outputs only when an accumulator asks, so the other methods run the same graph as
 * before.
 */
import { GraphError } from "../errors.js";
import type { StageCut } from "./blockCut.js";
import { attributeInt, nodeLabel, type GraphIndex } from "./graphIndex.js";
import type { LinearInfo } from "./linears.js";

export interface ObservedTensor {
  name: string;
  /** ONNX element type of the tensor */
  dataType: number;
}

// Attention ops that keep the probabilities inside (contrib and standard fused attention).
const FUSED_ATTENTION = new Set(["MultiHeadAttention", "GroupQueryAttention", "Attention", "PackedMultiHeadAttention", "SparseAttention"]);

/** The linear's MatMul (or Gemm) output A·B, in the model's compute type. */
export function linearOutput(index: GraphIndex, linear: LinearInfo, floatType: number): ObservedTensor {
  return { name: index.nodes[linear.nodeIndex]!.output[0]!, dataType: floatType };
}

/**
 * The block's self-attention probabilities `[B, H, Tq, Tk]`: the output of its one Softmax.
 * Refuses a fused attention op, whose probabilities never leave the kernel, naming the op.
 */
export function attentionProbs(index: GraphIndex, cut: StageCut, floatType: number, subject: string): ObservedTensor {
  const fused = cut.nodes.map((n) => index.nodes[n]!).find((node) => FUSED_ATTENTION.has(node.opType));
  if (fused) {
    throw new GraphError(subject, `${cut.label}: the attention probabilities are inside the fused ${fused.opType} op ${nodeLabel(fused)}; TAMP's AMIA needs them, and recomputing softmax(qkᵀ/√d) from q/k is not supported yet: use a model exported with unfused attention (MatMul, Softmax)`);
  }
  const softmax = cut.nodes.map((n) => index.nodes[n]!).filter((node) => node.opType === "Softmax");
  if (softmax.length !== 1) {
    throw new GraphError(subject, `${cut.label}: TAMP's AMIA needs the block's attention probabilities, from exactly one Softmax; the block has ${softmax.length}`);
  }
  const node = softmax[0]!;
  // Half-precision exports compute the softmax in float32 (a Cast before it).
  const p = index.producer.get(node.input[0]!);
  const producer = p === undefined ? undefined : index.nodes[p]!;
  const dataType = producer?.opType === "Cast" ? attributeInt(producer, "to", floatType) : floatType;
  return { name: node.output[0]!, dataType };
}
