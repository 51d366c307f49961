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
}

export interface PruneReport {
  method: string;
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
