/**
 * Measures a cost table (costTable.ts) through the real engine: prunes small generated models
 * with each method and fits the seconds of every block to
 *
 *   tokens x params x secondsPerTokenParam      (the forwards' matmuls, SparseGPT's Gram products)
 *   + samples x secondsPerSample                (a forward's dispatch and per-sample work, per block)
 *   + compress units x secondsPerCompressUnit   (mask selection; SparseGPT's solves, in²(in+out))
 *
 * by non-negative least squares over runs at three widths and two token counts. One term fitted
 * on one small model (hidden 256) put a 2-core machine's hidden-1,024 model at 1.5 times its
 * measured time, and SparseGPT's solves, which grow as in³ whatever the tokens, far off for wide
 * models. A fourth term, tokens x channels, fitted these runs as well but left the matmuls too
 * little weight to extrapolate to wide models (at hidden 8,192 half of what they cost at 1,024).
 * Block 0 is left out: it carries the process's warm-up, which a job pays once, not per block.
 */
import { join } from "node:path";
import { cpus, platform } from "node:os";
import { generateModel } from "../gen/genModel.js";
import { InvalidArgumentError } from "../errors.js";
import type { LinearInfo } from "../graph/linears.js";
import { linearCompressCost, methodDefinition, type MethodDefinition } from "../methods/index.js";
import { analyzeModel } from "../pipeline/modelAnalysis.js";
import { compressMakespan } from "../pipeline/compressShares.js";
import { pruneModel } from "../pipeline/pruneModel.js";
import type { CostTable, MethodCost } from "./costTable.js";
import { blockParams } from "./modelShape.js";

/** The quantities a block's seconds are fitted to, in MethodCost's order. */
export interface BlockTerms {
  tokenParams: number;
  samples: number;
  compressUnits: number;
}

const TERMS = ["tokenParams", "samples", "compressUnits"] as const;

/** A block's terms for `samples` calibration samples of `tokens` tokens in all. */
export function blockCostTerms(definition: Pick<MethodDefinition, "compressCost">, linears: readonly LinearInfo[], tokens: number, samples: number): BlockTerms {
  return { tokenParams: tokens * blockParams(linears), samples, compressUnits: linears.reduce((a, l) => a + linearCompressCost(definition, l), 0) };
}

/**
 * Non-negative least squares (seconds = terms · x, x >= 0): over every subset of the terms,
 * the unconstrained fit of that subset with the least residual among those with no negative
 * coefficient (exact for three terms: 7 subsets). Columns are scaled to unit norm first (the
 * terms differ by orders of magnitude); a subset whose columns are dependent is skipped.
 */
export function fitCost(rows: readonly BlockTerms[], seconds: readonly number[]): BlockTerms {
  if (rows.length !== seconds.length || rows.length === 0) throw new InvalidArgumentError("rows", `${rows.length} rows for ${seconds.length} timings`);
  const n = TERMS.length;
  const cols = rows.map((r) => TERMS.map((t) => r[t]));
  const norms = TERMS.map((_, j) => Math.sqrt(cols.reduce((a, c) => a + c[j]! * c[j]!, 0)) || 1);
  const scaled = cols.map((c) => c.map((v, j) => v / norms[j]!));
  const solve = (free: number[]): number[] | undefined => {
    const k = free.length;
    // The normal equations of the free columns, Gauss-Jordan with partial pivoting.
    const m = free.map((i) => [...free.map((j) => scaled.reduce((a, c) => a + c[i]! * c[j]!, 0)), scaled.reduce((a, c, r) => a + c[i]! * seconds[r]!, 0)]);
    for (let p = 0; p < k; p++) {
      let piv = p;
      for (let r = p + 1; r < k; r++) if (Math.abs(m[r]![p]!) > Math.abs(m[piv]![p]!)) piv = r;
      [m[p], m[piv]] = [m[piv]!, m[p]!];
      if (Math.abs(m[p]![p]!) < 1e-9) return undefined;
      for (let r = 0; r < k; r++) {
        if (r === p) continue;
        const f = m[r]![p]! / m[p]![p]!;
        for (let c = p; c <= k; c++) m[r]![c]! -= f * m[p]![c]!;
      }
    }
    const x = new Array<number>(n).fill(0);
    free.forEach((i, q) => { x[i] = m[q]![k]! / m[q]![q]!; });
    return x;
  };
  const residual = (x: number[]) => scaled.reduce((a, c, r) => a + (c.reduce((s, v, j) => s + v * x[j]!, 0) - seconds[r]!) ** 2, 0);
  let best = new Array<number>(n).fill(0);
  let bestResidual = Infinity;
  for (let subset = 1; subset < 1 << n; subset++) {
    const x = solve(TERMS.map((_, j) => j).filter((j) => subset & (1 << j)));
    if (x === undefined || x.some((v) => v < 0)) continue;
    const r = residual(x);
    if (r < bestResidual) [best, bestResidual] = [x, r];
  }
  return Object.fromEntries(TERMS.map((t, j) => [t, best[j]! / norms[j]!])) as unknown as BlockTerms;
}

/**
 * Predicted seconds of a block for one of `replicas` replicas, by term (BlockTerms' names): each
 * replica calibrates 1/replicas of `tokens` and of the `samples`, so those terms divide; the
 * compress step is shared out as the engine shares it (compressShares: longest first to the
 * least loaded, so SparseGPT's widest solve bounds it). A table without the newer terms predicts
 * from tokens x params alone.
 */
export function blockSecondsByTerm(cost: MethodCost, definition: Pick<MethodDefinition, "compressCost">, linears: readonly LinearInfo[], tokens: number, samples: number, replicas = 1): BlockTerms {
  const units = compressMakespan(linears.map((l) => linearCompressCost(definition, l)), replicas);
  return {
    tokenParams: (cost.secondsPerTokenParam * (tokens * blockParams(linears))) / replicas,
    samples: ((cost.secondsPerSample ?? 0) * samples) / replicas,
    compressUnits: (cost.secondsPerCompressUnit ?? 0) * units,
  };
}

/** blockSecondsByTerm, summed. */
export function blockSeconds(cost: MethodCost, definition: Pick<MethodDefinition, "compressCost">, linears: readonly LinearInfo[], tokens: number, samples: number, replicas = 1): number {
  const s = blockSecondsByTerm(cost, definition, linears, tokens, samples, replicas);
  return s.tokenParams + s.samples + s.compressUnits;
}

/** The generated models the fit runs over (three widths) and the samples of each run (two token counts). */
const WIDTHS = [256, 512, 1024] as const;
const SAMPLES = [4, 16] as const;
/** block 0 (warm-up) is left out, so two blocks of each run are fitted */
const LAYERS = 3;

export interface CostCalibrationOptions {
  /** methods to measure (each must read calibration tokens) */
  methods: readonly string[];
  /** the engine's threads (undefined: every core) */
  threads?: number;
  /** where onnxruntime runs (default cpu; auto: CUDA where it loads); the table records what ran */
  device?: "cpu" | "cuda" | "auto";
  /** a scratch folder the models and outputs go to */
  dir: string;
  /** told before each prune (the whole calibration takes minutes) */
  onRun?: (run: { method: string; hidden: number; samples: number; index: number; of: number }) => void;
}

/** Prunes the calibration models with each method and fits its MethodCost. */
export async function measureCostTable(options: CostCalibrationOptions): Promise<CostTable> {
  for (const m of options.methods) {
    if (!methodDefinition(m, "--method").needsCalibration) throw new InvalidArgumentError("--method", `${m} reads no calibration tokens, so it has no cost per token to measure`);
  }
  const models = [];
  for (const hidden of WIDTHS) {
    const gen = await generateModel({ outDir: join(options.dir, `model-${hidden}`), layers: LAYERS, hidden, samples: Math.max(...SAMPLES), seqLen: 128, imageTokens: 48, seed: 1 });
    models.push({ hidden, model: gen.modelPath, calib: gen.calibPath, linears: analyzeModel(gen.modelPath).partition.blockLinears });
  }
  const methods: Record<string, MethodCost> = {};
  let device = options.device ?? "cpu";
  for (const m of options.methods) {
    const definition = methodDefinition(m, "--method");
    const rows: BlockTerms[] = [];
    const seconds: number[] = [];
    let tokens = 0;
    let index = 0;
    for (const model of models) {
      for (const nsamples of SAMPLES) {
        options.onRun?.({ method: m, hidden: model.hidden, samples: nsamples, index: index++, of: models.length * SAMPLES.length });
        const out = join(options.dir, `${m}-${model.hidden}-${nsamples}`);
        const report = await pruneModel({ model: model.model, calib: model.calib, out, method: m as never, sparsity: 0.5, nsamples, threads: options.threads, device: options.device });
        tokens = Math.max(tokens, report.totals.tokens);
        device = report.totals.device as typeof device;
        for (const b of report.blocks.slice(1)) {
          rows.push(blockCostTerms(definition, model.linears[b.index]!, report.totals.tokens, report.totals.samples));
          seconds.push(b.seconds);
        }
      }
    }
    const fit = fitCost(rows, seconds);
    methods[m] = {
      secondsPerTokenParam: fit.tokenParams,
      secondsPerSample: fit.samples,
      secondsPerCompressUnit: fit.compressUnits,
      blocks: rows.length,
      tokens,
      paramsPerBlock: blockParams(models.at(-1)!.linears[1]!),
      widths: [...WIDTHS],
    };
  }
  return {
    machine: { cpu: cpus()[0]?.model ?? "unknown", cores: cpus().length, platform: `${platform()}-${process.arch}`, node: process.version, device, threads: options.threads ?? 0 },
    measuredAt: new Date().toISOString(),
    methods,
  };
}
