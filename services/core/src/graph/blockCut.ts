/**
 * Cuts one stage of the hidden-state path (the prologue or one decoder block) out of the full
 * graph as a standalone graph: the boundary state in and out, the graph inputs it needs (masks,
 * positions, empty past key/values), the side nodes that derive them, and the prunable weights
 * as graph inputs so that one onnxruntime session serves the dense and the pruned forward.
 */
import { create } from "@bufbuild/protobuf";
import { GraphProtoSchema, ModelProtoSchema, TensorProtoSchema, type ModelProto, type ValueInfoProto } from "../../../gen/onnx_pb.js";
import { valueInfo } from "../onnx/valueInfo.js";
import { GraphError } from "../errors.js";
import { PROLOGUE, SIDE, type BlockPartition } from "./blockPartition.js";
import type { GraphIndex } from "./graphIndex.js";
import type { LinearInfo } from "./linears.js";
import type { ObservedTensor } from "./observedTensors.js";

export interface StageCut {
  /** PROLOGUE or the block index */
  stage: number;
  label: string;
  /** node indices in topological order: the stage's own nodes plus the side nodes they need */
  nodes: number[];
  /** hidden-path tensors coming from earlier stages */
  stateInputs: string[];
  /** hidden-path tensors later stages need, produced here */
  stateOutputs: string[];
  /** graph inputs fed from the calibration sample (attention mask, positions, past key/values...) */
  sideInputs: string[];
  /** initializers embedded in the cut (everything but the prunable weights) */
  initializers: string[];
  /** prunable weights, fed as graph inputs */
  weights: LinearInfo[];
  /** distinct activation tensors multiplied by the prunable weights, in first-use order */
  activations: string[];
}

export interface StagePlan {
  prologue: StageCut | undefined;
  blocks: StageCut[];
  /** hidden-path tensors alive after the prologue (index 0) and after each block (index b + 1) */
  stateAfter: string[][];
}

export function planStages(index: GraphIndex, partition: BlockPartition, subject: string): StagePlan {
  const { nodeBlock, numBlocks } = partition;
  const producedIn = new Map<string, number>([[partition.mainInput, PROLOGUE]]);
  const lastUse = new Map<string, number>();
  index.nodes.forEach((node, n) => {
    const b = nodeBlock[n]!;
    if (b === SIDE) return;
    for (const out of node.output) if (out !== "") producedIn.set(out, b);
  });
  index.nodes.forEach((node, n) => {
    const b = nodeBlock[n]!;
    if (b === SIDE) return;
    for (const input of node.input) {
      const p = producedIn.get(input);
      if (p !== undefined && p < b) lastUse.set(input, Math.max(lastUse.get(input) ?? -Infinity, b));
    }
  });
  const stateAfter: string[][] = [];
  for (let s = PROLOGUE; s < numBlocks; s++) {
    const live: string[] = [];
    for (const [t, p] of producedIn) {
      const last = lastUse.get(t);
      if (last !== undefined && p <= s && s < last) live.push(t);
    }
    stateAfter.push(live);
  }
  const prologueNodes = index.topoOrder.filter((n) => nodeBlock[n] === PROLOGUE);
  const prologue = prologueNodes.length > 0
    ? cutStage(index, partition, PROLOGUE, "prologue", [], stateAfter[0]!, [], subject)
    : undefined;
  const blocks = partition.blockLinears.map((linears, b) =>
    cutStage(index, partition, b, partition.blockLabels[b]!, stateAfter[b]!, stateAfter[b + 1]!, linears, subject));
  return { prologue, blocks, stateAfter };
}

function cutStage(
  index: GraphIndex, partition: BlockPartition, stage: number, label: string,
  stateBefore: readonly string[], stateAfterStage: readonly string[], linears: readonly LinearInfo[], subject: string,
): StageCut {
  const own = new Set(index.topoOrder.filter((n) => partition.nodeBlock[n] === stage));
  const included = new Set(own);
  const stateIn = new Set<string>();
  const sideInputs = new Set<string>();
  const initializers = new Set<string>();
  const weightNames = new Set(linears.map((l) => l.weight));
  const live = new Set(stateBefore);

  const queue = [...own];
  while (queue.length > 0) {
    const n = queue.pop()!;
    for (const input of index.nodes[n]!.input) {
      if (input === "") continue;
      const p = index.producer.get(input);
      if (p !== undefined) {
        if (included.has(p)) continue;
        if (partition.nodeBlock[p] === SIDE) { included.add(p); queue.push(p); continue; }
        if (!live.has(input)) throw new GraphError(subject, `${label}: node ${index.nodes[n]!.name || index.nodes[n]!.opType} needs ${input}, which is not part of the state between blocks`);
        stateIn.add(input);
      } else if (index.initializers.has(input)) {
        if (!weightNames.has(input)) initializers.add(input);
      } else if (index.inputs.has(input)) {
        if (live.has(input) && own.has(n)) stateIn.add(input);
        else sideInputs.add(input);
      } else {
        throw new GraphError(subject, `${label}: tensor ${input} has no producer, initializer or graph input`);
      }
    }
  }
  const producedHere = new Set<string>();
  for (const n of own) for (const out of index.nodes[n]!.output) if (out !== "") producedHere.add(out);
  const stateOutputs = stateAfterStage.filter((t) => producedHere.has(t));
  const activations = [...new Set(linears.map((l) => l.activation))];
  // Keep state inputs in the order of the state list, so every stage agrees on it.
  const stateInputs = stateBefore.filter((t) => stateIn.has(t));
  for (const t of stateIn) if (!stateInputs.includes(t)) stateInputs.push(t);
  return {
    stage, label,
    nodes: index.topoOrder.filter((n) => included.has(n)),
    stateInputs,
    stateOutputs,
    sideInputs: [...sideInputs].filter((s) => !stateIn.has(s)),
    initializers: [...initializers],
    weights: [...linears],
    activations,
  };
}

export interface CutModelInput {
  source: ModelProto;
  index: GraphIndex;
  cut: StageCut;
  /** raw bytes of each initializer of cut.initializers */
  initializerBytes: ReadonlyMap<string, Uint8Array>;
  /** element type of hidden-path tensors and activations (the model's compute type) */
  floatType: number;
  /** inner tensors to expose as extra outputs (a linear's output, attention probabilities) */
  observed?: readonly ObservedTensor[];
}

/** Serializes a cut as a standalone ONNX model (initializers inline, weights as inputs). */
export function buildCutModel({ source, index, cut, initializerBytes, floatType, observed = [] }: CutModelInput): ModelProto {
  const known = new Map<string, ValueInfoProto>();
  for (const v of [...index.graph.valueInfo, ...index.graph.output, ...index.graph.input]) known.set(v.name, v);
  const infoOf = (name: string): ValueInfoProto => known.get(name) ?? valueInfo(name, floatType, undefined);
  const inputs = [
    ...cut.stateInputs.map(infoOf),
    ...cut.sideInputs.map((name) => index.inputs.get(name)!),
    ...cut.weights.map((l) => valueInfo(l.weight, l.dataType, index.initializers.get(l.weight)!.dims.map(Number))),
  ];
  const inputNames = new Set(inputs.map((v) => v.name));
  const outputs = [...cut.stateOutputs, ...cut.activations.filter((a) => !inputNames.has(a))].map(infoOf);
  const outputNames = new Set(outputs.map((v) => v.name));
  for (const o of observed) {
    if (!outputNames.has(o.name) && !inputNames.has(o.name)) outputs.push(known.get(o.name) ?? valueInfo(o.name, o.dataType, undefined));
    outputNames.add(o.name);
  }
  const initializers = cut.initializers.map((name) => {
    const t = index.initializers.get(name)!;
    return create(TensorProtoSchema, { name, dims: t.dims, dataType: t.dataType, rawData: initializerBytes.get(name)! });
  });
  const graph = create(GraphProtoSchema, {
    name: `${index.graph.name || "graph"}:${cut.label}`,
    node: cut.nodes.map((n) => index.nodes[n]!),
    input: inputs,
    output: outputs,
    initializer: initializers,
  });
  return create(ModelProtoSchema, {
    irVersion: source.irVersion,
    opsetImport: source.opsetImport,
    producerName: "atv-prune",
    graph,
    functions: source.functions,
  });
}

