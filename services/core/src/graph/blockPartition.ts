/**
 * Groups a decoder graph into blocks (decoder layers): by node-name paths (`layers.N`, as torch
 * exports and the onnxruntime-genai builder write them), or, when names say nothing, by the
 * structure of the residual stream. The result labels every node prologue, block i, epilogue or
 * side (a node that does not depend on the hidden states: masks, positions, constants).
 */
import { GraphError } from "../errors.js";
import { OnnxDataType as DT } from "../onnx/dtype.js";
import type { GraphIndex } from "./graphIndex.js";
import type { LinearInfo } from "./linears.js";

export const PROLOGUE = -1;
export const SIDE = -2;

export interface BlockPartition {
  method: "names" | "structure";
  /** the graph input that carries the hidden-state path (inputs_embeds or input_ids) */
  mainInput: string;
  numBlocks: number;
  /** per node: SIDE, PROLOGUE, 0..numBlocks-1, or numBlocks for the epilogue */
  nodeBlock: Int32Array;
  /** label of each block, e.g. "layers.3" */
  blockLabels: string[];
  /** prunable linears of each block, in topological order */
  blockLinears: LinearInfo[][];
  /** linears outside every block (embeddings, lm_head): never pruned */
  outsideLinears: LinearInfo[];
}

const LAYER_NAME = /(?:^|[/.])(?:layers|layer|h|blocks|block)\.(\d+)(?=[/.]|$)/;
const ATTENTION_OPS = new Set(["MultiHeadAttention", "GroupQueryAttention", "Attention", "PackedMultiHeadAttention", "SparseAttention"]);
// Shape-only ops: their outputs do not carry hidden-state values, so they end the taint.
const SHAPE_OPS = new Set(["Shape", "Size"]);

export function partitionBlocks(index: GraphIndex, linears: readonly LinearInfo[], subject: string): BlockPartition {
  const mainInput = pickMainInput(index, subject);
  const tainted = taintedNodes(index, mainInput);
  const hidden = linears.filter((l) => tainted[l.nodeIndex]);
  if (hidden.length === 0) throw new GraphError(subject, `no prunable linear (MatMul/Gemm with a 2-D float weight) depends on ${mainInput}`);

  const byName = blocksByName(index, tainted, hidden);
  const method = byName ? "names" : "structure";
  const assigned = byName ?? blocksByStructure(index, tainted, mainInput, subject);
  const { nodeBlock, numBlocks, labels } = assigned;

  const blockLinears: LinearInfo[][] = Array.from({ length: numBlocks }, () => []);
  const outsideLinears: LinearInfo[] = [];
  for (const l of [...linears].sort((a, b) => index.topoRank[a.nodeIndex]! - index.topoRank[b.nodeIndex]!)) {
    const b = nodeBlock[l.nodeIndex]!;
    if (b >= 0 && b < numBlocks) blockLinears[b]!.push(l);
    else outsideLinears.push(l);
  }
  blockLinears.forEach((list, b) => {
    if (list.length === 0) throw new GraphError(subject, `block ${labels[b]} has no prunable linear`);
  });
  checkMonotone(index, nodeBlock, subject);
  return { method, mainInput, numBlocks, nodeBlock, blockLabels: labels, blockLinears, outsideLinears };
}

function pickMainInput(index: GraphIndex, subject: string): string {
  for (const name of ["inputs_embeds", "input_ids"]) if (index.inputs.has(name)) return name;
  const candidates = [...index.inputs.values()].filter((v) => {
    const t = v.type?.value;
    if (t?.case !== "tensorType") return false;
    const rank = t.value.shape?.dim.length;
    const isFloat = [DT.FLOAT, DT.FLOAT16, DT.BFLOAT16].includes(t.value.elemType);
    return isFloat && rank === 3 && !/past|present|cache/i.test(v.name);
  });
  if (candidates.length === 1) return candidates[0]!.name;
  throw new GraphError(subject, `cannot tell which graph input carries the hidden states (inputs: ${[...index.inputs.keys()].join(", ")}); expected inputs_embeds or input_ids`);
}

/** Nodes whose outputs depend on the values of the main input. */
function taintedNodes(index: GraphIndex, mainInput: string): Uint8Array {
  const tainted = new Uint8Array(index.nodes.length);
  const queue = [mainInput];
  while (queue.length > 0) {
    const tensor = queue.pop()!;
    for (const c of index.consumers.get(tensor) ?? []) {
      if (tainted[c] || SHAPE_OPS.has(index.nodes[c]!.opType)) continue;
      tainted[c] = 1;
      for (const out of index.nodes[c]!.output) if (out !== "") queue.push(out);
    }
  }
  return tainted;
}

interface Assignment { nodeBlock: Int32Array; numBlocks: number; labels: string[] }

function blocksByName(index: GraphIndex, tainted: Uint8Array, hidden: readonly LinearInfo[]): Assignment | undefined {
  const layerOf = (n: number): number | undefined => {
    const m = LAYER_NAME.exec(index.nodes[n]!.name);
    return m ? Number(m[1]) : undefined;
  };
  const layers = [...new Set(hidden.map((l) => layerOf(l.nodeIndex)).filter((x): x is number => x !== undefined))].sort((a, b) => a - b);
  if (layers.length === 0) return undefined;
  const blockOfLayer = new Map(layers.map((layer, b) => [layer, b] as const));
  const numBlocks = layers.length;
  const nodeBlock = new Int32Array(index.nodes.length).fill(SIDE);
  const named = new Uint8Array(index.nodes.length);
  for (let n = 0; n < index.nodes.length; n++) {
    if (!tainted[n]) continue;
    const b = blockOfLayer.get(layerOf(n) ?? -1);
    if (b !== undefined) { nodeBlock[n] = b; named[n] = 1; }
  }
  // Unnamed hidden-path nodes: before any block they are the prologue (embedding); otherwise
  // they belong to the next block they feed (a residual add between layers), or the epilogue.
  const afterBlock = new Uint8Array(index.nodes.length);
  for (const n of index.topoOrder) {
    if (!tainted[n]) continue;
    for (const input of index.nodes[n]!.input) {
      const p = index.producer.get(input);
      if (p !== undefined && tainted[p] && (named[p] || afterBlock[p])) afterBlock[n] = 1;
    }
  }
  const next = new Int32Array(index.nodes.length).fill(numBlocks);
  for (let i = index.topoOrder.length - 1; i >= 0; i--) {
    const n = index.topoOrder[i]!;
    if (!tainted[n] || named[n]) continue;
    if (!afterBlock[n]) { nodeBlock[n] = PROLOGUE; continue; }
    let best = numBlocks;
    for (const out of index.nodes[n]!.output) {
      for (const c of index.consumers.get(out) ?? []) {
        if (!tainted[c]) continue;
        best = Math.min(best, named[c] ? nodeBlock[c]! : next[c]!);
      }
    }
    next[n] = best;
    nodeBlock[n] = best;
  }
  return { nodeBlock, numBlocks, labels: layers.map((l) => `layers.${l}`) };
}

/**
 * Residual-stream walk: from the first hidden state, follow the chain of residual updates (an
 * Add whose other operand derives from the stream, or a Skip*LayerNormalization whose output 3
 * is the new stream). Updates whose delta contains an attention op start a layer; the update
 * just before each of them (the previous MLP's residual) is the block boundary.
 */
function blocksByStructure(index: GraphIndex, tainted: Uint8Array, mainInput: string, subject: string): Assignment {
  const reach = (tensors: readonly string[]): Uint8Array => {
    const seen = new Uint8Array(index.nodes.length);
    const queue = [...tensors];
    while (queue.length > 0) {
      for (const c of index.consumers.get(queue.pop()!) ?? []) {
        if (seen[c] || !tainted[c]) continue;
        seen[c] = 1;
        for (const out of index.nodes[c]!.output) if (out !== "") queue.push(out);
      }
    }
    return seen;
  };

  let h = mainInput;
  const mainType = index.inputs.get(mainInput)?.type?.value;
  if (mainType?.case === "tensorType" && [DT.INT64, DT.INT32].includes(mainType.value.elemType)) {
    const gather = (index.consumers.get(h) ?? []).find((c) => index.nodes[c]!.opType === "Gather" && index.nodes[c]!.input[1] === h);
    if (gather === undefined) throw new GraphError(subject, `cannot find the embedding lookup (Gather) of ${mainInput}`);
    h = index.nodes[gather]!.output[0]!;
  }
  const streamStart = reach([h]);

  interface Update { node: number; skip: boolean }
  const updates: Update[] = [];
  // A fused Skip*LayerNormalization emits the new stream (output 3) and its normalized copy
  // (output 0) that the next branch reads: both count as "derived from the stream".
  let sources = [h];
  for (;;) {
    const below = reach(sources);
    let found: (Update & { next?: string }) | undefined;
    for (const c of index.consumers.get(h) ?? []) {
      const node = index.nodes[c]!;
      const isSkip = /^Skip(Simplified)?LayerNormalization$/.test(node.opType);
      if (node.opType !== "Add" && !isSkip) continue;
      const [a, b] = node.input;
      if (a !== h && b !== h) continue;
      const other = a === h ? b : a;
      const p = other === undefined ? undefined : index.producer.get(other);
      if (p === undefined || !below[p]) continue;
      found = { node: c, skip: isSkip, next: isSkip ? node.output[3] || undefined : node.output[0] };
      break;
    }
    if (!found) break;
    updates.push({ node: found.node, skip: found.skip });
    if (!found.next) break;
    h = found.next;
    sources = found.skip ? index.nodes[found.node]!.output.filter((o) => o !== "") : [h];
  }
  if (updates.length === 0) throw new GraphError(subject, "no residual stream found (no Add or Skip*LayerNormalization joins the hidden state with a branch); name nodes layers.N to group them");

  const anchors = index.topoOrder.filter((n) => tainted[n] && (ATTENTION_OPS.has(index.nodes[n]!.opType) || index.nodes[n]!.opType === "Softmax"));
  const attentionUpdates = new Set<number>();
  for (const a of anchors) {
    const below = reach(index.nodes[a]!.output.filter((o) => o !== ""));
    const k = updates.findIndex((u) => below[u.node]);
    if (k >= 0) attentionUpdates.add(k);
  }
  const starts = [...attentionUpdates].sort((a, b) => a - b);
  if (starts.length === 0) throw new GraphError(subject, "no attention op (MultiHeadAttention, GroupQueryAttention, Attention or Softmax) on the residual stream; name nodes layers.N to group them");
  const numBlocks = starts.length;
  // boundary[c] = update that ends block c-1 (c = 1..numBlocks); the last one starts the epilogue.
  const boundaries: Update[] = [];
  for (let c = 1; c < numBlocks; c++) {
    if (starts[c]! - 1 <= starts[c - 1]!) throw new GraphError(subject, `layer ${c - 1} has no residual update between its attention and the next one`);
    boundaries.push(updates[starts[c]! - 1]!);
  }
  if (updates.length - 1 <= starts[numBlocks - 1]!) throw new GraphError(subject, "the last layer has no residual update after its attention");
  boundaries.push(updates[updates.length - 1]!);

  const nodeBlock = new Int32Array(index.nodes.length).fill(SIDE);
  for (let n = 0; n < index.nodes.length; n++) if (tainted[n]) nodeBlock[n] = streamStart[n] ? 0 : PROLOGUE;
  boundaries.forEach((u, i) => {
    const below = reach(index.nodes[u.node]!.output.filter((o) => o !== ""));
    // An Add's output is the whole hidden state: the Add ends the block before it. A fused
    // Skip*LayerNormalization both finishes the residual and normalizes for the next layer:
    // it opens the next block, which then receives the (residual, delta) pair.
    if (u.skip) below[u.node] = 1;
    for (let n = 0; n < index.nodes.length; n++) if (below[n]) nodeBlock[n] = Math.max(nodeBlock[n]!, i + 1);
  });
  return { nodeBlock, numBlocks, labels: Array.from({ length: numBlocks }, (_, b) => `block.${b}`) };
}

function checkMonotone(index: GraphIndex, nodeBlock: Int32Array, subject: string): void {
  index.nodes.forEach((node, n) => {
    const b = nodeBlock[n]!;
    if (b === SIDE) return;
    for (const input of node.input) {
      const p = index.producer.get(input);
      if (p === undefined) continue;
      const pb = nodeBlock[p]!;
      if (pb !== SIDE && pb > b) {
        throw new GraphError(subject, `node ${node.name || node.opType} (block ${b}) consumes ${input} from a later block (${pb}); the layers are not sequential`);
      }
    }
  });
}
