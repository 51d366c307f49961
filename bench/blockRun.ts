/**
 * Runs every block of a model through the real BlockEngine, as `atvp prune` does for one process
 * (sequential propagation, nothing written), and measures per block two figures the engine does
 * not report:
 *
 * - hostBytes: every tensor the block's session runs return that is not a boundary (hidden-path)
 *   state, over all samples and passes of the block: with host statistics the linears' whole
 *   input activations `[T, in]`, with graph statistics the `[in]` float64 sums and ATV's `[T]`
 *   float64 distances. The boundary states feed the next block either way and are not counted.
 * - maskSeconds: wall time of the block's mask selection, measured around the MaskPool the engine
 *   is given; calls that overlap (the block's linears, several mask threads) count once.
 *
 * Both are measured from outside the engine (its host and its mask pool are wrapped), so the
 * engine's outputs and report.json stay as they are. Shared by bench/statsBench.ts (averages)
 * and bench/blockFigures.ts (one JSON line per block, on any device).
 */
import { analyzeModel } from "../services/core/src/pipeline/modelAnalysis.js";
import { TensorData } from "../services/core/src/onnx/tensorData.js";
import { InferenceHost, type ExecutionDevice } from "../services/core/src/runtime/inferenceHost.js";
import { resolveSpec, type StatsMode } from "../services/core/src/pipeline/pruneSpec.js";
import { loadSamples } from "../services/core/src/pipeline/pruneModel.js";
import { planJob, planTargets, selectPrunable } from "../services/core/src/plan/jobPlan.js";
import { SampleFeeds } from "../services/core/src/pipeline/sampleFeeds.js";
import { BlockEngine } from "../services/core/src/pipeline/blockEngine.js";
import { MaskPool } from "../services/core/src/prune/maskPool.js";

export interface BlockRunOptions {
  model: string;
  calib: string;
  method: string;
  stats: StatsMode;
  device: ExecutionDevice | "auto";
  /** onnxruntime intra-op threads */
  threads: number;
  /** mask selection threads (default 1) */
  maskThreads?: number;
  /** default 0.5 */
  sparsity?: number;
}

export interface BlockFigures {
  block: number;
  label: string;
  /** the device the block's sessions ran on ("cpu" after an auto fallback) */
  device: string;
  /** the engine's own figures (report.json's blocks[]) */
  seconds: number;
  tokensPerSecond: number;
  maskSeconds: number;
  hostBytes: number;
  /** bytes of the block's prunable weights */
  weightBytes: number;
}

export interface BlockRun {
  /** the device the sessions ran on ("cpu" after an auto fallback) */
  device: string;
  /** onnxruntime threads after clamping to the machine */
  threads: number;
  samples: number;
  /** calibration tokens, each once */
  tokens: number;
  blocks: BlockFigures[];
}

/**
 * Runs the model's blocks in order; onBlock sees each block's figures as soon as the block is
 * done (a GPU run of 8B-wide blocks takes a while: lines come out as they are measured).
 */
export async function runEngineBlocks(options: BlockRunOptions, onBlock: (figures: BlockFigures) => void = () => {}): Promise<BlockRun> {
  const analysis = analyzeModel(options.model);
  const data = new TensorData(analysis.loaded);
  // The engine never reads `out`: nothing is written.
  const spec = resolveSpec({
    model: options.model, calib: options.calib, out: "(not written)", method: options.method, sparsity: options.sparsity ?? 0.5,
    threads: options.threads, maskThreads: options.maskThreads ?? 1, stats: options.stats, device: options.device,
  }, options.threads);
  const host = InferenceHost.start({ threads: spec.threads, device: spec.device });
  const maskPool = MaskPool.start(spec.maskThreads);
  try {
    const samples = loadSamples(spec, analysis);
    const plan = planJob(spec, analysis, data, selectPrunable(spec, analysis));
    const states = new Set(analysis.plan.stateAfter.flat());
    let copied = 0;
    const run = host.run.bind(host);
    host.run = async (session, feeds, fetches) => {
      const out = await run(session, feeds, fetches);
      for (const name of fetches) if (!states.has(name)) copied += out[name]!.data.byteLength;
      return out;
    };
    const masking = new WallTimer();
    const computeMasks = maskPool.computeMasks.bind(maskPool);
    maskPool.computeMasks = (jobs) => masking.time(() => computeMasks(jobs));

    const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
    const engine = new BlockEngine({ ...analysis, data, spec, host, samples, feeds, targets: planTargets(plan), maskPool });
    let input = await engine.initialStates();
    const blocks: BlockFigures[] = [];
    for (let b = 0; b < analysis.partition.numBlocks; b++) {
      copied = 0;
      masking.reset();
      const result = await engine.runBlock(b, input);
      const figures: BlockFigures = {
        block: b, label: result.report.label, device: host.activeDevice, seconds: result.report.seconds, tokensPerSecond: result.report.tokensPerSecond,
        maskSeconds: masking.seconds, hostBytes: copied,
        weightBytes: plan.linears.filter((l) => l.block === b).reduce((a, l) => a + l.region.length, 0),
      };
      blocks.push(figures);
      onBlock(figures);
      input = result.next;
      engine.recycle(result.weights);
    }
    return { device: host.activeDevice, threads: host.threads, samples: samples.length, tokens: samples.reduce((a, s) => a + s.tokens, 0), blocks };
  } finally {
    await host.close();
    await maskPool.close();
    await data.close();
  }
}

/** Wall time during which at least one timed call was running (overlapping calls count once). */
class WallTimer {
  private running = 0;
  private since = 0;
  private total = 0;

  async time<T>(call: () => Promise<T>): Promise<T> {
    if (this.running++ === 0) this.since = performance.now();
    try {
      return await call();
    } finally {
      if (--this.running === 0) this.total += performance.now() - this.since;
    }
  }

  reset(): void {
    this.total = 0;
  }

  get seconds(): number {
    return this.total / 1000;
  }
}
