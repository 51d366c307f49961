/**
 * A finished block's report (report.json's blocks[] entry and its layers[]) as the BlockFinished
 * message and back: the coordinator builds report.json from the progress stream, never from the
 * workers' checkpoint files.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { BlockFinished, BlockFinishedSchema } from "../gen/atvprune/v1/job_pb.js";
import type { BlockReport, LayerReport } from "../core/src/index.js";

export interface BlockRecord {
  report: BlockReport;
  layers: LayerReport[];
}

export function toBlockFinished(record: BlockRecord, worker: string): MessageInitShape<typeof BlockFinishedSchema> {
  const r = record.report;
  return {
    block: r.index, label: r.label, worker, seconds: r.seconds, tokensPerSecond: r.tokensPerSecond,
    cosDistAvg: r.cosDistAvg ?? undefined, k: r.k, nText: r.nText, nVisual: r.nVisual,
    pruned: BigInt(record.layers.reduce((a, l) => a + l.pruned, 0)),
    params: BigInt(record.layers.reduce((a, l) => a + l.params, 0)),
    layers: record.layers.map((l) => ({
      weight: l.weight, node: l.node, block: l.block, inDim: l.shape[0], outDim: l.shape[1], dataType: l.dataType,
      targetSparsity: l.targetSparsity, pruned: BigInt(l.pruned), params: BigInt(l.params), facts: l.facts ?? {},
    })),
  };
}

export function fromBlockFinished(m: BlockFinished): BlockRecord {
  return {
    report: {
      index: m.block, label: m.label, cosDistAvg: m.cosDistAvg ?? null, k: [...m.k], nText: [...m.nText], nVisual: [...m.nVisual],
      seconds: m.seconds, tokensPerSecond: m.tokensPerSecond,
    },
    layers: m.layers.map((l) => {
      const pruned = Number(l.pruned);
      const params = Number(l.params);
      const facts = Object.keys(l.facts).length > 0 ? { facts: { ...l.facts } } : {};
      return {
        weight: l.weight, node: l.node, block: l.block, shape: [l.inDim, l.outDim], dataType: l.dataType,
        targetSparsity: l.targetSparsity, sparsity: pruned / params, pruned, params, ...facts,
      };
    }),
  };
}
