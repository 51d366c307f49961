/**
 * The wire JobSpec (proto) as the engine's PruneSpec. proto3 strings are "" when unset and mean
 * "the default", so they become undefined (except method and the paths, which have none).
 * Threads and device belong to the worker that runs the job, not to the job.
 */
import { status } from "@grpc/grpc-js";
import type { JobSpec } from "../gen/atvprune/v1/job_pb.js";
import type { PruneSpec } from "../core/src/index.js";
import { RpcError } from "./status.js";

function seedOf(seed: bigint | undefined): number | undefined {
  if (seed === undefined) return undefined;
  if (seed > BigInt(Number.MAX_SAFE_INTEGER) || seed < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new RpcError(status.INVALID_ARGUMENT, `spec.seed: ${seed} is outside the exactly representable range (|seed| <= 2^53 - 1)`);
  }
  return Number(seed);
}

export function toPruneSpec(spec: JobSpec, worker?: { threads: number; device: "cpu" | "cuda" | "auto" }): PruneSpec {
  return {
    model: spec.model,
    calib: spec.calib || undefined,
    out: spec.out,
    method: spec.method as PruneSpec["method"],
    sparsity: spec.sparsity,
    pattern: spec.pattern || undefined,
    alpha: spec.alpha,
    propagation: (spec.propagation || undefined) as PruneSpec["propagation"],
    nsamples: spec.nsamples,
    seed: seedOf(spec.seed),
    include: [...spec.include],
    exclude: [...spec.exclude],
    magnitudeScope: (spec.magnitudeScope || undefined) as PruneSpec["magnitudeScope"],
    sparsityProfile: spec.sparsityProfile || undefined,
    owlLambda: spec.owlLambda,
    owlM: spec.owlM,
    ...(spec.tampMaxSparsity !== undefined ? { tampMaxSparsity: spec.tampMaxSparsity } : {}),
    force: spec.force,
    ...(spec.maskThreads !== undefined ? { maskThreads: spec.maskThreads } : {}),
    ...(spec.stats ? { stats: spec.stats as PruneSpec["stats"] } : {}),
    ...(worker ? { threads: worker.threads, device: worker.device } : {}),
  };
}
