/**
 * What a worker needs before running any block of a job, from the JobPlan the coordinator
 * resolved: the plan's linears and targets are the selection, its regions the output layout.
 * Nothing is re-derived from a spec; the model is analysed only to cut its blocks, and the plan
 * is checked against that analysis (a plan for another model fails here, naming the weight).
 */
import {
  type CalibSample, InvalidArgumentError, type Region, TensorData, analyzeModel,
  type ModelAnalysis, loadSamples, type ResolvedSpec, needsCalibration, planRegions, planSpec,
  planTargets, type JobPlan, type PlanPhase, SampleFeeds,
} from "../../../core/src/index.js";

export interface ShardJob {
  plan: JobPlan;
  spec: ResolvedSpec;
  analysis: ModelAnalysis;
  data: TensorData;
  samples: CalibSample[];
  feeds: SampleFeeds[];
  /** the linears the job prunes (over all blocks) and their targets */
  targets: Map<string, number>;
  /** where each pruned weight goes in <out>/model.onnx.data(.partial) */
  regions: Map<string, Region>;
}

/**
 * `phase` "prune" (RunShard) needs a plan whose profile phase is done (the coordinator runs it
 * first, through RunProfile, and sends the plan with the final targets).
 */
export async function openShardJob(plan: JobPlan, worker: { threads: number; device: "cpu" | "cuda" | "auto" }, phase: PlanPhase = "prune"): Promise<ShardJob> {
  if (!plan.phases.includes(phase)) throw new InvalidArgumentError("plan.phases", `the plan has no ${phase} phase (phases: ${plan.phases.join(", ")})`);
  if (phase === "prune" && plan.phases.includes("profile")) throw new InvalidArgumentError("plan.phases", `the ${plan.sparsityProfile} profile's pre-pass must run (RunProfile) before shards prune`);
  const spec = planSpec(plan, worker);
  const analysis = analyzeModel(plan.model);
  checkPlanFits(plan, analysis);
  const data = new TensorData(analysis.loaded);
  try {
    await data.validate();
    const samples = needsCalibration(plan.method) ? loadSamples(spec, analysis) : [];
    const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
    return { plan, spec, analysis, data, samples, feeds, targets: planTargets(plan), regions: planRegions(plan) };
  } catch (err) {
    await data.close();
    throw err;
  }
}

function checkPlanFits(plan: JobPlan, analysis: ModelAnalysis): void {
  const blocks = analysis.partition.numBlocks;
  if (plan.blocks !== blocks) throw new InvalidArgumentError("plan.blocks", `the plan has ${plan.blocks} blocks, ${plan.model} has ${blocks}; the plan is for another model`);
  for (const l of plan.linears) {
    if (!analysis.partition.blockLinears[l.block]?.some((x) => x.weight === l.weight)) {
      throw new InvalidArgumentError("plan.linears", `${l.weight} is not a linear of block ${l.block} of ${plan.model}; the plan is for another model`);
    }
  }
}
