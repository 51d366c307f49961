/**
 * The JobPlan (core/src/plan/jobPlan.ts) as the wire message and back. The method's options
 * travel as the proto `oneof method`; a plan read from the wire is checked (checkPlan) before a
 * worker runs it, and a bad one is INVALID_ARGUMENT naming the field.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { JobPlanSchema, PlanPhase, type JobPlan as JobPlanMessage } from "../gen/atvprune/v1/plan_pb.js";
import {
  InvalidArgumentError, type MethodOptions, checkPlan, type JobPlan, type PlanPhase as Phase,
  type Propagation, type StatsMode,
} from "../core/src/index.js";

type MethodOneof = MessageInitShape<typeof JobPlanSchema>["method"];
type MethodRead = JobPlanMessage["method"];

/** Each method's own options in the oneof; a method without options sends an empty message. */
const METHOD_WIRE: Record<string, { toWire(o: MethodOptions): MethodOneof; fromWire(m: MethodRead): Partial<MethodOptions> }> = {
  atv: { toWire: (o) => ({ case: "atv", value: { alpha: o.alpha } }), fromWire: (m) => (m.case === "atv" ? { alpha: m.value.alpha } : {}) },
  wanda: { toWire: () => ({ case: "wanda", value: {} }), fromWire: () => ({}) },
  sparsegpt: { toWire: () => ({ case: "sparsegpt", value: {} }), fromWire: () => ({}) },
  tamp: { toWire: () => ({ case: "tamp", value: {} }), fromWire: () => ({}) },
  "atv-sparsegpt": {
    toWire: (o) => ({ case: "atvSparsegpt", value: { alpha: o.alpha } }),
    fromWire: (m) => (m.case === "atvSparsegpt" ? { alpha: m.value.alpha } : {}),
  },
  magnitude: {
    toWire: (o) => ({ case: "magnitude", value: { scope: o.magnitudeScope } }),
    fromWire: (m) => (m.case === "magnitude" ? { magnitudeScope: m.value.scope as MethodOptions["magnitudeScope"] } : {}),
  },
};

const WIRE_CASE_NAMES: Record<string, string> = { atvSparsegpt: "atv-sparsegpt" };

const PHASES: Record<Phase, PlanPhase> = { profile: PlanPhase.PROFILE, prune: PlanPhase.PRUNE };

function wireOf(method: string): (typeof METHOD_WIRE)[string] {
  const w = METHOD_WIRE[method];
  if (!w) throw new InvalidArgumentError("plan.method", `${method} has no wire form yet (services/rpc/jobPlanWire.ts)`);
  return w;
}

export function toPlanMessage(plan: JobPlan): JobPlanMessage {
  return create(JobPlanSchema, {
    model: plan.model,
    calib: plan.calib ?? "",
    out: plan.out,
    method: wireOf(plan.method).toWire(plan.methodOptions),
    sparsity: plan.sparsity,
    pattern: plan.methodOptions.patternText,
    propagation: plan.propagation,
    nsamples: plan.nsamples,
    seed: BigInt(plan.seed),
    sparsityProfile: plan.sparsityProfile,
    owlLambda: plan.profileOptions.owlLambda,
    owlM: plan.profileOptions.owlM,
    tampMaxSparsity: plan.profileOptions.tampMaxSparsity,
    phases: plan.phases.map((p) => PHASES[p]),
    blocks: plan.blocks,
    linears: plan.linears.map((l) => ({ weight: l.weight, block: l.block, target: l.target, offset: BigInt(l.region.offset), length: BigInt(l.region.length) })),
    dataBytes: BigInt(plan.dataBytes),
    activationCacheBytes: BigInt(plan.activationCacheBytes),
    maskThreads: plan.maskThreads,
    stats: plan.stats,
  });
}

/** The plan a worker runs; an InvalidArgumentError naming `plan.<field>` if it cannot be run. */
export function fromPlanMessage(m: JobPlanMessage | undefined): JobPlan {
  if (!m) throw new InvalidArgumentError("plan", "is required");
  if (!m.method.case) throw new InvalidArgumentError("plan.method", "is required");
  // The oneof's case is the method's name, except where a name is not an identifier (atv-sparsegpt).
  const method = WIRE_CASE_NAMES[m.method.case] ?? m.method.case;
  const options: MethodOptions = {
    alpha: 0, magnitudeScope: "column", pattern: { kind: "unstructured" }, patternText: m.pattern || "unstructured",
    ...wireOf(method).fromWire(m.method),
  };
  const phaseNames = new Map(Object.entries(PHASES).map(([k, v]) => [v, k as Phase]));
  return checkPlan({
      model: m.model,
      calib: m.calib || undefined,
      out: m.out,
      method,
      methodOptions: options,
      sparsity: m.sparsity,
      propagation: m.propagation as Propagation,
      nsamples: m.nsamples,
      seed: Number(m.seed),
      sparsityProfile: m.sparsityProfile,
      profileOptions: { owlLambda: m.owlLambda, owlM: m.owlM, ...(m.tampMaxSparsity !== undefined ? { tampMaxSparsity: m.tampMaxSparsity } : {}) },
      phases: m.phases.map((p) => {
        const name = phaseNames.get(p);
        if (!name) throw new InvalidArgumentError("plan.phases", `unknown phase ${p}`);
        return name;
      }),
      blocks: m.blocks,
      linears: m.linears.map((l) => ({ weight: l.weight, block: l.block, target: l.target, region: { offset: Number(l.offset), length: Number(l.length) } })),
      dataBytes: Number(m.dataBytes),
      activationCacheBytes: Number(m.activationCacheBytes),
      maskThreads: m.maskThreads || 1,
      stats: (m.stats || "host") as StatsMode,
    });
}
