/**
 * The job spec: what to prune and how. The same spec drives `atvp prune`, a cluster job and a
 * Kubernetes job, so it is validated here once, with errors that name the field.
 */
import { InvalidArgumentError } from "../errors.js";
import { parsePattern, type Pattern } from "../prune/maskSelect.js";

export type MethodName = "atv" | "wanda" | "magnitude";
export type Propagation = "sequential" | "dense";

export interface PruneSpec {
  model: string;
  /** calibration JSONL; not needed by magnitude */
  calib?: string;
  out: string;
  method: MethodName;
  /** fraction pruned per output column; with an N:M pattern it must be N/M (or left out) */
  sparsity?: number;
  pattern?: string;
  alpha?: number;
  propagation?: Propagation;
  nsamples?: number;
  seed?: number;
  /** regular expressions over weight or node names: prune only matching linears */
  include?: string[];
  /** regular expressions over weight or node names: leave matching linears dense */
  exclude?: string[];
  /** magnitude: one threshold per matrix (Wanda's baseline, default) or per column */
  magnitudeScope?: "matrix" | "column";
  threads?: number;
  /** threads selecting masks (default 1: see MaskPool); any count gives the same bits */
  maskThreads?: number;
  device?: "cpu" | "cuda" | "auto";
  force?: boolean;
  /** bytes of activations ATV may keep between its two passes instead of recomputing them */
  activationCacheBytes?: number;
}

export interface ResolvedSpec {
  model: string;
  calib: string | undefined;
  out: string;
  method: MethodName;
  sparsity: number;
  pattern: Pattern;
  patternText: string;
  alpha: number;
  propagation: Propagation;
  nsamples: number | undefined;
  seed: number;
  include: RegExp[];
  exclude: RegExp[];
  magnitudeScope: "matrix" | "column";
  threads: number;
  maskThreads: number;
  device: "cpu" | "cuda" | "auto";
  force: boolean;
  activationCacheBytes: number;
}

export const DEFAULT_SEED = 21;

export function resolveSpec(spec: PruneSpec, defaultThreads: number): ResolvedSpec {
  if (!["atv", "wanda", "magnitude"].includes(spec.method)) {
    throw new InvalidArgumentError("method", `must be atv, wanda or magnitude, got ${JSON.stringify(spec.method)}`);
  }
  if (!spec.model) throw new InvalidArgumentError("model", "is required");
  if (!spec.out) throw new InvalidArgumentError("out", "is required");
  if (spec.method !== "magnitude" && !spec.calib) throw new InvalidArgumentError("calib", `is required by method ${spec.method}`);
  const patternText = spec.pattern ?? "unstructured";
  const pattern = parsePattern(patternText);
  let sparsity = spec.sparsity;
  if (pattern.kind === "nm") {
    const implied = pattern.n / pattern.m;
    if (sparsity !== undefined && sparsity !== implied) {
      throw new InvalidArgumentError("sparsity", `pattern ${patternText} prunes ${implied}; give --sparsity ${implied} or leave it out`);
    }
    sparsity = implied;
  }
  if (sparsity === undefined) throw new InvalidArgumentError("sparsity", "is required");
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new InvalidArgumentError("sparsity", `must be in [0, 1), got ${sparsity}`);
  }
  const alpha = spec.alpha ?? 1;
  if (!Number.isFinite(alpha) || alpha < 0) throw new InvalidArgumentError("alpha", `must be a finite number >= 0, got ${alpha}`);
  const propagation = spec.propagation ?? "sequential";
  if (propagation !== "sequential" && propagation !== "dense") {
    throw new InvalidArgumentError("propagation", `must be sequential or dense, got ${JSON.stringify(propagation)}`);
  }
  if (spec.nsamples !== undefined && (!Number.isInteger(spec.nsamples) || spec.nsamples < 1)) {
    throw new InvalidArgumentError("nsamples", `must be a positive integer, got ${spec.nsamples}`);
  }
  const seed = spec.seed ?? DEFAULT_SEED;
  if (!Number.isInteger(seed)) throw new InvalidArgumentError("seed", `must be an integer, got ${seed}`);
  const magnitudeScope = spec.magnitudeScope ?? "matrix";
  if (magnitudeScope !== "matrix" && magnitudeScope !== "column") {
    throw new InvalidArgumentError("magnitudeScope", `must be matrix or column, got ${JSON.stringify(magnitudeScope)}`);
  }
  if (spec.method === "magnitude" && magnitudeScope === "matrix" && pattern.kind !== "unstructured") {
    throw new InvalidArgumentError("pattern", "magnitude with one threshold per matrix is unstructured; use --magnitude-scope column for N:M");
  }
  const threads = spec.threads ?? defaultThreads;
  if (!Number.isInteger(threads) || threads < 1) throw new InvalidArgumentError("threads", `must be a positive integer, got ${threads}`);
  const maskThreads = spec.maskThreads ?? 1;
  if (!Number.isSafeInteger(maskThreads) || maskThreads < 1) throw new InvalidArgumentError("maskThreads", `must be a positive integer, got ${maskThreads}`);
  const device = spec.device ?? "cpu";
  if (!["cpu", "cuda", "auto"].includes(device)) throw new InvalidArgumentError("device", `must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
  return {
    model: spec.model,
    calib: spec.calib,
    out: spec.out,
    method: spec.method,
    sparsity,
    pattern,
    patternText,
    alpha,
    propagation,
    nsamples: spec.nsamples,
    seed,
    include: compile(spec.include ?? [], "include"),
    exclude: compile(spec.exclude ?? [], "exclude"),
    magnitudeScope,
    threads,
    maskThreads,
    device,
    force: spec.force ?? false,
    activationCacheBytes: spec.activationCacheBytes ?? 512 * 1024 * 1024,
  };
}

function compile(patterns: readonly string[], field: string): RegExp[] {
  return patterns.map((p) => {
    try {
      return new RegExp(p);
    } catch (err) {
      throw new InvalidArgumentError(field, `bad regular expression ${JSON.stringify(p)}: ${(err as Error).message}`);
    }
  });
}

/** include/exclude over the weight or node name of a linear. */
export function isSelected(spec: Pick<ResolvedSpec, "include" | "exclude">, weight: string, node: string): boolean {
  const hit = (r: RegExp) => r.test(weight) || r.test(node);
  if (spec.include.length > 0 && !spec.include.some(hit)) return false;
  return !spec.exclude.some(hit);
}
