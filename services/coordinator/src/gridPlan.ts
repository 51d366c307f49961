/**
 * The grid `atvp plan` shows: the stages the coordinator's shard planner would cut for N equal
 * workers (the same planShards call the job runner makes), memory per worker, bytes per link,
 * and a wall-time prediction from a measured per-block cost table. Only a model's shape is
 * needed, so it sizes models whose weights are not at hand.
 */
import { blockParams, blockSecondsByTerm, blockWeightBytes, elementSize, InvalidArgumentError, methodDefinition, type MethodCost, type ModelShape } from "../../core/src/index.js";
import { blockMemoryNeed, planGrid as planWorkerGrid, replicaHeldBytes } from "./shardPlanner.js";

export interface GridOptions {
  workers: number;
  workerMemoryBytes: number;
  /** link bandwidth between workers, gigabits per second */
  networkGbps: number;
  /** replicas per stage; 0: the coordinator's planner chooses */
  replicas: number;
  method: string;
  samples: number;
  tokensPerSample: number;
  propagation: "sequential" | "dense";
}

export interface PlannedStage {
  index: number;
  /** replica 0's worker */
  worker: string;
  /** every replica's worker, in replica order */
  workers: string[];
  firstBlock: number;
  /** exclusive */
  endBlock: number;
  replicas: number;
  params: number;
  /** the stage's weights (what it reads and writes) */
  weightBytes: number;
  /** what its worker must hold at once: the largest block's need (the planner's check) */
  peakBytes: number;
  seconds: number;
}

export interface PlannedLink {
  from: number;
  to: number;
  bytes: number;
  seconds: number;
}

export interface GridPlan {
  source: string;
  method: string;
  propagation: string;
  blocks: number;
  stages: PlannedStage[];
  replicas: number;
  workers: number;
  workerMemoryBytes: number;
  samples: number;
  tokensPerSample: number;
  /** the hidden state of one sample at a stage boundary */
  boundaryBytesPerSample: number;
  links: PlannedLink[];
  /** what each replica pulls per block: the others' per-sample records, a chain's sums, the others' compress results */
  exchange: { bytesPerReplicaPerBlock: number; seconds: number };
  predicted: {
    computeSeconds: number; transferSeconds: number; wallSeconds: number;
    /** computeSeconds by term: the forwards (tokens x params), per-sample dispatch, the compress step */
    computeByTerm: { tokenParams: number; samples: number; compressUnits: number };
    /** the cost table's terms it was computed with (costTable.ts) */
    secondsPerTokenParam: number; secondsPerSample: number; secondsPerCompressUnit: number;
  };
}

export function planGrid(shape: ModelShape, options: GridOptions, cost: MethodCost): GridPlan {
  const definition = methodDefinition(options.method, "--method");
  const blocks = shape.blockLinears.map((linears) => ({
    bytes: blockWeightBytes(linears),
    flops: blockParams(linears),
    workingBytes: definition.workingBytes?.(linears) ?? 0,
    replicaBytes: options.samples * (definition.recordBytes?.(linears, options.tokensPerSample) ?? 0),
    chainSumBytes: definition.sumBytes?.(linears) ?? 0,
  }));
  const workers = Array.from({ length: options.workers }, (_, i) => ({ address: `worker-${i}`, memoryBytes: options.workerMemoryBytes }));
  const need = Math.max(...blocks.map((b) => blockMemoryNeed(b.bytes, b.workingBytes)));
  if (need > options.workerMemoryBytes) {
    throw new InvalidArgumentError("--worker-memory", `${shape.source} does not fit: one block needs ${need} bytes (weights x2 + the method's working memory), a worker has ${options.workerMemoryBytes}; give workers more memory`);
  }
  const tokens = options.samples * options.tokensPerSample;
  // The coordinator's own planner: the grid a job would get on these workers.
  const grid = planWorkerGrid(blocks, workers, {
    replicas: options.replicas, samples: options.samples, replicable: definition.replicable === true,
    sequential: options.propagation === "sequential", method: options.method,
  });
  const R = grid.replicas;
  // One replica's seconds per block: its share of the tokens, its share of the compress step.
  const byTerm = shape.blockLinears.map((ls) => blockSecondsByTerm(cost, definition, ls, tokens, options.samples, R));
  const seconds = byTerm.map((t) => t.tokenParams + t.samples + t.compressUnits);
  // Each replica runs its stage's blocks over 1/R of the samples.
  const stages: PlannedStage[] = grid.shards.filter((s) => s.replica === 0).map((s) => {
    const mine = blocks.slice(s.firstBlock, s.endBlock);
    return {
      index: s.stage, worker: s.worker,
      workers: grid.shards.filter((r) => r.stage === s.stage).sort((a, b) => a.replica - b.replica).map((r) => r.worker),
      firstBlock: s.firstBlock, endBlock: s.endBlock, replicas: R,
      params: mine.reduce((a, b) => a + b.flops, 0),
      weightBytes: mine.reduce((a, b) => a + b.bytes, 0),
      peakBytes: Math.max(...mine.map((b) => blockMemoryNeed(b.bytes, b.workingBytes) + (R > 1 ? replicaHeldBytes(b, options.samples, R) : 0))),
      seconds: seconds.slice(s.firstBlock, s.endBlock).reduce((a, b) => a + b, 0),
    };
  });
  const boundaryBytesPerSample = shape.hidden * options.tokensPerSample * elementSize(shape.dataType, shape.source);
  const bytesPerSecond = (options.networkGbps * 1e9) / 8;
  // R replica-to-replica links in parallel at each stage boundary, each carrying 1/R of the samples.
  const links = stages.slice(1).map((s) => {
    const bytes = boundaryBytesPerSample * options.samples;
    return { from: s.index - 1, to: s.index, bytes, seconds: bytes / R / bytesPerSecond };
  });
  // Per block a replica pulls the other replicas' per-sample records (ATV's distances, sums of
  // squares) as float64, one or two sums of a chain (SparseGPT's Hessians: the one before it and
  // the total; two for a replica in the middle), and the results of the linears the others
  // compress (about (R - 1) / R of the block's: masks as bits, SparseGPT's new weights).
  const othersSamples = options.samples - Math.floor(options.samples / R);
  const pulled = (ls: (typeof shape.blockLinears)[number]) => othersSamples * (definition.recordBytes?.(ls, options.tokensPerSample) ?? 0)
    + (R > 2 ? 2 : 1) * (definition.sumBytes?.(ls) ?? 0)
    + (ls.length >= R ? Math.ceil(((R - 1) / R) * ls.reduce((a, l) => a + (definition.resultBytes?.(l) ?? Math.ceil((l.inDim * l.outDim) / 8)), 0)) : 0);
  const exchangeBytes = shape.blockLinears.map((ls) => (R > 1 ? pulled(ls) : 0));
  const exchangeSeconds = exchangeBytes.reduce((a, b) => a + b, 0) / bytesPerSecond;
  const computeSeconds = seconds.reduce((a, b) => a + b, 0);
  const transferSeconds = links.reduce((a, l) => a + l.seconds, 0) + exchangeSeconds;
  // Sequential: block l+1 waits for block l's masks, so the stages run one after another.
  // Dense: stages overlap, the slowest one bounds the job.
  const busiest = options.propagation === "dense" ? Math.max(...stages.map((s) => s.seconds)) : computeSeconds;
  return {
    source: shape.source, method: options.method, propagation: options.propagation, blocks: blocks.length, stages,
    replicas: R, workers: options.workers, workerMemoryBytes: options.workerMemoryBytes,
    samples: options.samples, tokensPerSample: options.tokensPerSample, boundaryBytesPerSample, links,
    exchange: { bytesPerReplicaPerBlock: Math.max(...exchangeBytes), seconds: exchangeSeconds },
    predicted: {
      computeSeconds, transferSeconds, wallSeconds: busiest + transferSeconds,
      computeByTerm: {
        tokenParams: byTerm.reduce((a, t) => a + t.tokenParams, 0),
        samples: byTerm.reduce((a, t) => a + t.samples, 0),
        compressUnits: byTerm.reduce((a, t) => a + t.compressUnits, 0),
      },
      secondsPerTokenParam: cost.secondsPerTokenParam, secondsPerSample: cost.secondsPerSample ?? 0, secondsPerCompressUnit: cost.secondsPerCompressUnit ?? 0,
    },
  };
}
