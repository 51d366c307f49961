/**
 * The worker's own path policy: a shard assignment names files on this worker's disks (model,
 * calibration set and its .npy files, output, work dir), and the worker must not trust whoever
 * sent it to have checked them. The checks are the coordinator's (pathPolicy.ts: realpath, no
 * `..` or symlink escapes), against the worker's own `--allow-root` folders; the work dir may
 * also lie in a `--work-root`. Refusals are PERMISSION_DENIED naming the field.
 */
import { realpathSync } from "node:fs";
import { clone } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { ShardAssignmentSchema, type ShardAssignment } from "../../../gen/atvprune/v1/worker_pb.js";
import { JobPlanSchema, type JobPlan } from "../../../gen/atvprune/v1/plan_pb.js";
import { RpcError, checkJobFiles, resolveWorkDir } from "../../../rpc/index.js";

export interface AssignmentPolicy {
  /** folders job model, calibration and output paths must lie in */
  allowedRoots: string[];
  /** further folders the job work dirs may lie in (the coordinator's --work-root) */
  workRoots: string[];
}

/**
 * A root that does not resolve (not created yet on a shared volume) is the worker's own setup
 * problem: say so here, before pathPolicy.ts would blame the coordinator's flags.
 */
function checkRoots(policy: AssignmentPolicy): void {
  for (const root of [...policy.allowedRoots, ...policy.workRoots]) {
    try {
      realpathSync(root);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? "error";
      throw new RpcError(status.FAILED_PRECONDITION, `worker root ${root} cannot be resolved (${code}); create it or fix the worker's --allow-root/--work-root`);
    }
  }
}

/** The assignment with every path checked and made real (the checked paths are the ones used). */
export function confineAssignment(a: ShardAssignment, policy: AssignmentPolicy): ShardAssignment {
  const checked = clone(ShardAssignmentSchema, a);
  checked.plan = confinePlan(a.plan, policy);
  checked.workDir = resolveWorkDir(a.workDir, [...policy.allowedRoots, ...policy.workRoots], "work_dir");
  return checked;
}

/** A plan's paths checked and made real against the worker's own roots. */
export function confinePlan(plan: JobPlan | undefined, policy: AssignmentPolicy): JobPlan {
  checkRoots(policy);
  if (!plan) throw new RpcError(status.INVALID_ARGUMENT, "plan: is required");
  // Model, its external data, calibration set and .npy files, output: the coordinator's own check.
  const method = plan.method.case ?? "";
  const paths = checkJobFiles({ model: plan.model, calib: plan.calib || undefined, out: plan.out, method }, policy.allowedRoots);
  const checked = clone(JobPlanSchema, plan);
  checked.model = paths.model;
  checked.calib = paths.calib ?? "";
  checked.out = paths.out;
  return checked;
}
