/**
 * The pruning methods by name. Adding a method is one file beside these and one line here; the
 * block pipeline, the CLI and the cluster look methods up here and never test a method's name.
 */
import { InvalidArgumentError } from "../errors.js";
import { atv } from "./atv.js";
import { magnitude } from "./magnitude.js";
import type { Method, MethodDefinition, MethodOptions } from "./method.js";
import { atvSparseGpt, sparseGpt } from "./sparseGpt.js";
import { tamp } from "./tamp.js";
import { wanda } from "./wanda.js";

export type * from "./method.js";
export { DEFAULT_ACCUMULATOR_BUDGET_BYTES, NO_POOL_FACTS, isExchangeable, isSumming, linearCompressCost } from "./method.js";

const METHODS: ReadonlyMap<string, MethodDefinition> = new Map([atv, wanda, magnitude, sparseGpt, atvSparseGpt, tamp].map((m) => [m.name, m]));

/** Methods the contract names (../shared/METHODS.md) that this build refuses, and why. */
const NOT_SUPPORTED_YET: ReadonlyMap<string, string> = new Map();

export function methodNames(): string[] {
  return [...METHODS.keys()];
}

/** The method called `name`, or an InvalidArgumentError on `field` listing the known ones. */
export function methodDefinition(name: string, field = "method"): MethodDefinition {
  const m = METHODS.get(name);
  const later = NOT_SUPPORTED_YET.get(name);
  if (later) throw new InvalidArgumentError(field, `${name} is not supported yet: ${later}`);
  if (!m) {
    const names = methodNames();
    throw new InvalidArgumentError(field, `must be ${names.slice(0, -1).join(", ")} or ${names.at(-1)}, got ${JSON.stringify(name)}`);
  }
  return m;
}

/** Refuses more than one replica per stage for a method whose calibration cannot be split. */
export function checkReplicas(name: string, replicas: number, field = "replicas"): void {
  if (replicas <= 1) return;
  const m = methodDefinition(name);
  if (m.replicable) return;
  const why = m.needsCalibration ? "its statistics are not reduced across replicas yet" : "it reads no calibration samples, so there is nothing to split";
  throw new InvalidArgumentError(field, `method ${name} cannot be split over replicas (${why}); use 1`);
}

/** The method a resolved job runs, with its options. */
export function createMethod(spec: { method: string } & MethodOptions): Method {
  return methodDefinition(spec.method).create(spec);
}

/** Whether method `name` reads a calibration set (an unknown name is assumed to, until it is refused). */
export function needsCalibration(name: string): boolean {
  return METHODS.get(name)?.needsCalibration ?? true;
}
