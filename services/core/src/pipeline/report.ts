/** report.json: what was pruned, how much, and what ATV chose per block. */
export interface LayerReport {
  weight: string;
  node: string;
  block: number;
  /** [in, out] */
  shape: [number, number];
  dataType: string;
  targetSparsity: number;
  /** achieved: pruned / total */
  sparsity: number;
  pruned: number;
  params: number;
  /** the method's own facts about this linear (e.g. SparseGPT's reconstruction error), if any */
  facts?: Record<string, number>;
}

export interface BlockReport {
  index: number;
  label: string;
  /** ATV: mean cosine distance of visual tokens (0 when none); null for other methods */
  cosDistAvg: number | null;
  /** ATV: visual tokens kept per sample */
  k: number[];
  nText: number[];
  nVisual: number[];
  seconds: number;
  tokensPerSecond: number;
  /** achieved over the block's pruned linears: pruned / params (filled in by buildReport) */
  sparsity?: number;
  /** the profile's target for the block, params-weighted over its linears (filled in by buildReport) */
  targetSparsity?: number;
}

/** A block's achieved and target sparsity from its linears' reports. */
export function blockSparsity(layers: readonly LayerReport[]): { sparsity: number; targetSparsity: number } {
  const params = layers.reduce((a, l) => a + l.params, 0);
  if (params === 0) return { sparsity: 0, targetSparsity: 0 };
  return {
    sparsity: layers.reduce((a, l) => a + l.pruned, 0) / params,
    // One target for the whole block (uniform, OWL) is reported exactly, not re-averaged.
    targetSparsity: layers.every((l) => l.targetSparsity === layers[0]!.targetSparsity)
      ? layers[0]!.targetSparsity
      : layers.reduce((a, l) => a + l.targetSparsity * l.params, 0) / params,
  };
}

export interface PruneReport {
  method: string;
  /** how --sparsity became per-linear targets (uniform, owl) and the profile's options */
  sparsityProfile?: { name: string; owlLambda?: number; owlM?: number };
  sparsity: number;
  pattern: string;
  alpha: number;
  propagation: string;
  layers: LayerReport[];
  blocks: BlockReport[];
  totals: {
    params: number;
    pruned: number;
    sparsity: number;
    blocks: number;
    samples: number;
    /** calibration tokens (padding excluded), each once */
    tokens: number;
    /** tokens run through blocks: tokens x blocks (what atvp_calibration_token_passes_total counts) */
    tokenPasses: number;
    seconds: number;
    graphAnalysis: "names" | "structure";
    device: string;
    threads: number;
  };
  spec: Record<string, unknown>;
}
