/**
 * One JobPlan per job, resolved once (by `atvp prune`, or by the coordinator) from the spec and
 * the model's graph, and then only run: which linears are pruned and to what target, where each
 * pruned weight goes in the output data file, the method and its options, and the phases. The
 * workers of a cluster receive it (proto JobPlan) instead of re-deriving selections and layouts
 * from the spec "by determinism".
 */
import { InvalidArgumentError, UnsupportedTypeError } from "../errors.js";
import type { LinearInfo } from "../graph/linears.js";
import { methodDefinition, type MethodOptions } from "../methods/index.js";
import { FLOAT_WEIGHT_TYPES, typeName } from "../onnx/dtype.js";
import { planLayout, type Region } from "../onnx/modelWriter.js";
import type { TensorData } from "../onnx/tensorData.js";
import type { ModelAnalysis } from "../pipeline/modelAnalysis.js";
import { checkStats, isSelected, selectLinears, TAMP_MAX_SPARSITY_MARGIN, type Propagation, type ResolvedSpec, type StatsMode } from "../pipeline/pruneSpec.js";
import { jobProfile, type LinearTargets } from "../profiles/index.js";
import { parsePattern } from "../prune/maskSelect.js";

/** profile: the sparsity profile's dense pre-pass over every block; prune: DESIGN §2 per block. */
export type PlanPhase = "profile" | "prune";

export interface PlannedLinear {
  weight: string;
  block: number;
  /** fraction to prune */
  target: number;
  /** where its bytes go in <out>/model.onnx.data */
  region: Region;
}

export interface JobPlan {
  /** real paths */
  model: string;
  calib: string | undefined;
  out: string;
  method: string;
  methodOptions: MethodOptions;
  /** the job's sparsity (N/M for an N:M pattern) */
  sparsity: number;
  propagation: Propagation;
  nsamples: number | undefined;
  seed: number;
  sparsityProfile: string;
  /** the profile's options (OWL's λ and M; TAMP's s_max, absent from the cluster's wire plan) */
  profileOptions: { owlLambda: number; owlM: number; tampMaxSparsity?: number };
  phases: PlanPhase[];
  blocks: number;
  /** every linear the job prunes, in block order */
  linears: PlannedLinear[];
  /** size of <out>/model.onnx.data */
  dataBytes: number;
  activationCacheBytes: number;
  /** threads each worker selects masks with (same bits at any count) */
  maskThreads: number;
  /** where the statistics are computed (host: from whole activations; graph: inside the block's graph) */
  stats: StatsMode;
}

/**
 * The plan of a resolved spec on an analysed model. Reads only the graph and the tensors'
 * metadata (sizes, external-data ranges), never a weight. Refuses linears that cannot be pruned
 * (non-float weights, N:M on an input not a multiple of M) before any output is touched.
 */
export function planJob(spec: ResolvedSpec, analysis: ModelAnalysis, data: TensorData, perBlock = selectPrunable(spec, analysis)): JobPlan {
  const selected = perBlock.flat();
  const profile = jobProfile(spec);
  // Without a pre-pass the targets are final; with one they are placeholders the profile phase replaces.
  const targets = profile.prePass ? uniformTargets(perBlock, spec.sparsity) : profile.targets({ sparsity: spec.sparsity, linears: perBlock, facts: [] });
  const { byName, end } = planLayout(analysis.loaded, data, spec.out, new Set(selected.map((l) => l.weight)));
  const linears = perBlock.flatMap((ls, block) => ls.map((l) => ({ weight: l.weight, block, target: targets.get(l.weight)!, region: { ...byName.get(l.weight)!.region } })));
  return {
    model: spec.model,
    calib: spec.calib,
    out: spec.out,
    method: spec.method,
    methodOptions: { alpha: spec.alpha, magnitudeScope: spec.magnitudeScope, pattern: spec.pattern, patternText: spec.patternText },
    sparsity: spec.sparsity,
    propagation: spec.propagation,
    nsamples: spec.nsamples,
    seed: spec.seed,
    sparsityProfile: profile.name,
    profileOptions: { owlLambda: spec.owlLambda, owlM: spec.owlM, ...(profile.options?.["tampMaxSparsity"] !== undefined ? { tampMaxSparsity: spec.tampMaxSparsity } : {}) },
    phases: profile.prePass ? ["profile", "prune"] : ["prune"],
    blocks: analysis.partition.numBlocks,
    linears,
    dataBytes: end,
    activationCacheBytes: spec.activationCacheBytes,
    maskThreads: spec.maskThreads,
    stats: spec.stats,
  };
}

/**
 * The linears a spec prunes, per block, refused early when they cannot be pruned: callers run
 * this before the output folder is prepared (--force clears it), planJob's layout after.
 */
export function selectPrunable(spec: ResolvedSpec, analysis: ModelAnalysis): LinearInfo[][] {
  // Refuses --include/--exclude patterns that match nothing in the whole model.
  checkPrunable(spec, selectLinears(spec, analysis.partition.blockLinears.flat()));
  return analysis.partition.blockLinears.map((linears) => linears.filter((l) => isSelected(spec, l.weight, l.node)));
}

function uniformTargets(perBlock: readonly (readonly LinearInfo[])[], sparsity: number): LinearTargets {
  return new Map(perBlock.flat().map((l) => [l.weight, sparsity]));
}

function checkPrunable(spec: ResolvedSpec, linears: readonly LinearInfo[]): void {
  for (const l of linears) {
    if (!FLOAT_WEIGHT_TYPES.has(l.dataType)) {
      throw new UnsupportedTypeError(l.weight, `weight of ${l.node} is ${typeName(l.dataType)}; atv-prune prunes float32, float16 and bfloat16 weights (leave it dense with --exclude)`);
    }
    // Checked here as well as in computeMask, so the job fails before --force clears the
    // output folder and before any block is calibrated.
    if (spec.pattern.kind === "nm" && l.inDim % spec.pattern.m !== 0) {
      throw new InvalidArgumentError(l.weight, `input dimension ${l.inDim} of ${l.node} is not a multiple of M=${spec.pattern.m} for the ${spec.patternText} pattern (leave it dense with --exclude)`);
    }
  }
}

/** The per-linear targets of a plan, by weight name. */
export function planTargets(plan: Pick<JobPlan, "linears">): Map<string, number> {
  return new Map(plan.linears.map((l) => [l.weight, l.target]));
}

/** The output regions of a plan's linears, by weight name. */
export function planRegions(plan: Pick<JobPlan, "linears">): Map<string, Region> {
  return new Map(plan.linears.map((l) => [l.weight, l.region]));
}

/**
 * The engine's view of a plan on a machine that runs it (threads and device are the machine's).
 * Nothing is re-resolved: the plan's linears are the selection, its targets the sparsities.
 */
export function planSpec(plan: JobPlan, runtime: { threads: number; device: "cpu" | "cuda" | "auto" }): ResolvedSpec {
  return {
    model: plan.model,
    calib: plan.calib,
    out: plan.out,
    method: plan.method,
    sparsity: plan.sparsity,
    pattern: plan.methodOptions.pattern,
    patternText: plan.methodOptions.patternText,
    alpha: plan.methodOptions.alpha,
    propagation: plan.propagation,
    nsamples: plan.nsamples,
    seed: plan.seed,
    include: [],
    exclude: [],
    magnitudeScope: plan.methodOptions.magnitudeScope,
    sparsityProfile: plan.sparsityProfile,
    owlLambda: plan.profileOptions.owlLambda,
    owlM: plan.profileOptions.owlM,
    tampMaxSparsity: plan.profileOptions.tampMaxSparsity ?? Math.min(1, plan.sparsity + TAMP_MAX_SPARSITY_MARGIN),
    threads: runtime.threads,
    device: runtime.device,
    force: false,
    activationCacheBytes: plan.activationCacheBytes,
    maskThreads: plan.maskThreads,
    stats: plan.stats,
  };
}

/**
 * A plan that arrived over the wire, checked before a worker acts on it: a coordinator of
 * another version, or a hand-made assignment, must fail naming the field, not prune wrongly.
 */
export function checkPlan(plan: JobPlan): JobPlan {
  const definition = methodDefinition(plan.method, "plan.method");
  if (!plan.model) throw new InvalidArgumentError("plan.model", "is required");
  if (!plan.out) throw new InvalidArgumentError("plan.out", "is required");
  if (definition.needsCalibration && !plan.calib) throw new InvalidArgumentError("plan.calib", `is required by method ${plan.method}`);
  const pattern = parsePattern(plan.methodOptions.patternText);
  definition.checkOptions?.({ ...plan.methodOptions, pattern });
  for (const l of plan.linears) {
    if (!(l.target >= 0 && l.target < 1)) throw new InvalidArgumentError("plan.linears", `target ${l.target} of ${l.weight} is not in [0, 1)`);
  }
  if (plan.propagation !== "sequential" && plan.propagation !== "dense") throw new InvalidArgumentError("plan.propagation", `must be sequential or dense, got ${JSON.stringify(plan.propagation)}`);
  checkStats(plan.stats, plan.method, "plan.stats");
  return { ...plan, methodOptions: { ...plan.methodOptions, pattern } };
}
