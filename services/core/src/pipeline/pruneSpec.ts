/**
 * The job spec: what to prune and how. The same spec drives `atvp prune`, a cluster job and a
 * Kubernetes job, so it is validated here once, with errors that name the field.
 */
import { InvalidArgumentError } from "../errors.js";
import { methodDefinition } from "../methods/index.js";
import { DAS_PROFILE, sparsityProfile } from "../profiles/index.js";
import { parsePattern, type Pattern } from "../prune/maskSelect.js";
import { OWL_DEFAULT_LAMBDA, OWL_DEFAULT_M } from "../prune/owlRatios.js";

/** A name from the methods registry (methods/index.ts). */
export type MethodName = string;
export type Propagation = "sequential" | "dense";
/** Where Wanda's and ATV's statistics are computed: on the host from whole activations, or inside the block's graph. */
export type StatsMode = "host" | "graph";

export interface PruneSpec {
  model: string;
  /** calibration JSONL; not needed by magnitude */
  calib?: string;
  out: string;
  method: MethodName;
  /** fraction pruned per output column (default DEFAULT_SPARSITY); with an N:M pattern it must be N/M (or left out) */
  sparsity?: number;
  /** how --sparsity becomes per-linear targets (default uniform) */
  sparsityProfile?: string;
  /** OWL's λ, the spread of its per-block sparsities (default 0.08) */
  owlLambda?: number;
  /** OWL's M: a weight is an outlier above M times its block's mean metric (default 5) */
  owlM?: number;
  /** TAMP's largest per-linear sparsity (default sparsity + 0.1, at most 1) */
  tampMaxSparsity?: number;
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
  /** where the statistics are computed (default host); graph: only [in]-sized vectors leave onnxruntime */
  stats?: StatsMode;
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
  sparsityProfile: string;
  owlLambda: number;
  owlM: number;
  tampMaxSparsity: number;
  threads: number;
  maskThreads: number;
  device: "cpu" | "cuda" | "auto";
  stats: StatsMode;
  force: boolean;
  activationCacheBytes: number;
}

// The job defaults, in this one place for the CLI, gRPC clients and Kubernetes resources alike.
export const DEFAULT_SEED = 21;
export const DEFAULT_SPARSITY = 0.5;
export const DEFAULT_ALPHA = 1;
export const DEFAULT_SPARSITY_PROFILE = "uniform";
export const DEFAULT_ACTIVATION_CACHE_BYTES = 512 * 1024 * 1024;
/** host keeps the bits of earlier releases; graph differs only in the order of float64 sums. */
export const DEFAULT_STATS: StatsMode = "host";
/** TAMP's --tamp-max-sparsity is the job's sparsity plus this (T scripts/prune/tamp.sh: S+0.1). */
export const TAMP_MAX_SPARSITY_MARGIN = 0.1;
/** Profiles that belong to one method, which imposes them (MethodDefinition.ownProfile). */
const OWN_PROFILES: ReadonlyMap<string, string> = new Map([[DAS_PROFILE, "tamp"]]);

export function resolveSpec(spec: PruneSpec, defaultThreads: number): ResolvedSpec {
  const method = methodDefinition(spec.method);
  if (!spec.model) throw new InvalidArgumentError("model", "is required");
  if (!spec.out) throw new InvalidArgumentError("out", "is required");
  if (method.needsCalibration && !spec.calib) throw new InvalidArgumentError("calib", `is required by method ${spec.method}`);
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
  sparsity ??= DEFAULT_SPARSITY;
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new InvalidArgumentError("sparsity", `must be in [0, 1), got ${sparsity} (out of range)`);
  }
  const alpha = spec.alpha ?? DEFAULT_ALPHA;
  if (!Number.isFinite(alpha) || alpha < 0) throw new InvalidArgumentError("alpha", `must be a finite number >= 0, got ${alpha} (out of range)`);
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
  method.checkOptions?.({ alpha, magnitudeScope, pattern, patternText });
  const owlLambda = spec.owlLambda ?? OWL_DEFAULT_LAMBDA;
  const owlM = spec.owlM ?? OWL_DEFAULT_M;
  const tampMaxSparsity = spec.tampMaxSparsity ?? Math.min(1, sparsity + TAMP_MAX_SPARSITY_MARGIN);
  if (spec.tampMaxSparsity !== undefined) {
    if (!method.ownProfile) throw new InvalidArgumentError("tampMaxSparsity", `is TAMP's option; ${spec.method} does not read it (use --method tamp)`);
    if (!(Number.isFinite(tampMaxSparsity) && tampMaxSparsity >= sparsity && tampMaxSparsity <= 1)) {
      throw new InvalidArgumentError("tampMaxSparsity", `must be in [sparsity, 1] = [${sparsity}, 1], got ${spec.tampMaxSparsity} (out of range)`);
    }
  }
  // A method with its own profile (TAMP's DAS) takes no other; the others may not take it.
  const own = method.ownProfile?.(pattern);
  if (own !== undefined && spec.sparsityProfile !== undefined && spec.sparsityProfile !== own) {
    throw new InvalidArgumentError("sparsityProfile", `${spec.method} sets its own profile (${own} here); leave --sparsity-profile out`);
  }
  if (own === undefined && spec.sparsityProfile !== undefined && OWN_PROFILES.has(spec.sparsityProfile)) {
    throw new InvalidArgumentError("sparsityProfile", `${spec.sparsityProfile} is the profile of ${OWN_PROFILES.get(spec.sparsityProfile)}; use that method instead`);
  }
  const profile = sparsityProfile(own ?? spec.sparsityProfile ?? DEFAULT_SPARSITY_PROFILE, { owlLambda, owlM, pattern, tampMaxSparsity });
  if (profile.prePass && !method.needsCalibration) {
    throw new InvalidArgumentError("sparsityProfile", `${profile.name} needs a calibration forward; ${spec.method} has none (use wanda, atv, sparsegpt or atv-sparsegpt)`);
  }
  const threads = spec.threads ?? defaultThreads;
  if (!Number.isInteger(threads) || threads < 1) throw new InvalidArgumentError("threads", `must be a positive integer, got ${threads} (out of range)`);
  const maskThreads = spec.maskThreads ?? 1;
  if (!Number.isSafeInteger(maskThreads) || maskThreads < 1) throw new InvalidArgumentError("maskThreads", `must be a positive integer, got ${maskThreads} (out of range)`);
  const stats = checkStats(spec.stats ?? DEFAULT_STATS, spec.method, "stats");
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
    sparsityProfile: profile.name,
    owlLambda,
    owlM,
    tampMaxSparsity,
    threads,
    maskThreads,
    device,
    stats,
    force: spec.force ?? false,
    activationCacheBytes: spec.activationCacheBytes ?? DEFAULT_ACTIVATION_CACHE_BYTES,
  };
}

/** The stats mode, refused for a method whose accumulators need whole activations (`field` named). */
export function checkStats(stats: string, methodName: string, field: string): StatsMode {
  if (stats !== "host" && stats !== "graph") throw new InvalidArgumentError(field, `must be host or graph, got ${JSON.stringify(stats)}`);
  const method = methodDefinition(methodName);
  if (stats === "graph" && method.needsCalibration && !method.statsInGraph) {
    throw new InvalidArgumentError(field, `graph is not supported yet for method ${methodName}: its statistics need whole activations (use --stats host, or a method whose statistic is the channel sum of squares: atv, wanda)`);
  }
  return stats;
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

/**
 * The linears the spec prunes, refusing an --include or --exclude pattern that matches no
 * linear (a typo would otherwise prune nothing, or everything, and still succeed) and a
 * selection that leaves nothing to prune.
 */
export function selectLinears<L extends { weight: string; node: string }>(spec: Pick<ResolvedSpec, "include" | "exclude">, linears: readonly L[]): L[] {
  for (const [field, patterns] of [["include", spec.include], ["exclude", spec.exclude]] as const) {
    for (const r of patterns) {
      if (!linears.some((l) => r.test(l.weight) || r.test(l.node))) {
        const examples = linears.slice(0, 3).map((l) => l.weight).join(", ");
        throw new InvalidArgumentError(field, `--${field} ${JSON.stringify(r.source)} matches no linear layer of the model (weights are named like ${examples}); check the pattern`);
      }
    }
  }
  const chosen = linears.filter((l) => isSelected(spec, l.weight, l.node));
  if (chosen.length === 0 && linears.length > 0) {
    throw new InvalidArgumentError(spec.include.length > 0 ? "include" : "exclude", "--include/--exclude leave no linear layer to prune; the job would change nothing");
  }
  return chosen;
}
