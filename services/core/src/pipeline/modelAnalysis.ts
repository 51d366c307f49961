/**
 * Everything known about a model before any weight is read: its blocks, linears and cuts. Used
 * by `atvp inspect`, the pruner, and (later) the coordinator's shard planner.
 */
import { GraphError } from "../errors.js";
import { planStages, type StagePlan } from "../graph/blockCut.js";
import { partitionBlocks, type BlockPartition } from "../graph/blockPartition.js";
import { indexGraph, type GraphIndex } from "../graph/graphIndex.js";
import { findLinears } from "../graph/linears.js";
import { readModel, type LoadedModel } from "../onnx/modelFile.js";

export interface ModelAnalysis {
  loaded: LoadedModel;
  index: GraphIndex;
  partition: BlockPartition;
  plan: StagePlan;
  /** element type of the hidden states (that of the block weights) */
  floatType: number;
}

export function analyzeModel(path: string): ModelAnalysis {
  const loaded = readModel(path);
  const graph = loaded.model.graph!;
  const index = indexGraph(graph, loaded.path);
  const partition = partitionBlocks(index, findLinears(index), loaded.path);
  const plan = planStages(index, partition, loaded.path);
  const floatType = partition.blockLinears[0]?.[0]?.dataType;
  if (floatType === undefined) throw new GraphError(loaded.path, "no decoder block found");
  return { loaded, index, partition, plan, floatType };
}
