/** Sparsity profiles by name (TAMP's DAS joins uniform and OWL here). */
import { InvalidArgumentError } from "../errors.js";
import type { Pattern } from "../prune/maskSelect.js";
import { DAS_PROFILE, dasProfile } from "./das.js";
import { owlProfile } from "./owl.js";
import type { SparsityProfile } from "./sparsityProfile.js";
import { uniform } from "./uniform.js";

export type * from "./sparsityProfile.js";
export { DAS_PROFILE } from "./das.js";

/** The options a job resolves for its profile (defaults in pipeline/pruneSpec.ts). */
export interface ProfileOptions {
  owlLambda: number;
  owlM: number;
  pattern: Pattern;
  /** TAMP's s_max (the DAS profile) */
  tampMaxSparsity: number;
}

const PROFILES: ReadonlyMap<string, (o: ProfileOptions) => SparsityProfile> = new Map([
  ["uniform", () => uniform],
  ["owl", (o: ProfileOptions) => owlProfile({ lambda: o.owlLambda, m: o.owlM, pattern: o.pattern })],
  [DAS_PROFILE, (o: ProfileOptions) => dasProfile(o.tampMaxSparsity)],
]);

const UNCHECKED: ProfileOptions = { owlLambda: 0, owlM: 1, pattern: { kind: "unstructured" }, tampMaxSparsity: 1 };

/** The profile a resolved job runs, with its options. */
export function jobProfile(spec: { sparsityProfile: string; owlLambda: number; owlM: number; pattern: Pattern; tampMaxSparsity?: number }): SparsityProfile {
  return sparsityProfile(spec.sparsityProfile, { ...spec, tampMaxSparsity: spec.tampMaxSparsity ?? UNCHECKED.tampMaxSparsity });
}

export function profileNames(): string[] {
  return [...PROFILES.keys()];
}

/**
 * The profile called `name` with the job's options (without them: only its name and whether it
 * has a pre-pass are meaningful). InvalidArgumentError on `field` for an unknown name.
 */
export function sparsityProfile(name: string, options: ProfileOptions = UNCHECKED, field = "sparsityProfile"): SparsityProfile {
  const p = PROFILES.get(name);
  if (!p) throw new InvalidArgumentError(field, `must be one of ${profileNames().join(", ")}, got ${JSON.stringify(name)}`);
  return p(options);
}
