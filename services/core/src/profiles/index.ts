/** Sparsity profiles by name (TAMP's DAS joins uniform and OWL here). */
import { InvalidArgumentError } from "../errors.js";
import type { Pattern } from "../prune/maskSelect.js";
import { owlProfile } from "./owl.js";
import type { SparsityProfile } from "./sparsityProfile.js";
import { uniform } from "./uniform.js";

export type * from "./sparsityProfile.js";

/** The options a job resolves for its profile (defaults in pipeline/pruneSpec.ts). */
export interface ProfileOptions {
  owlLambda: number;
  owlM: number;
  pattern: Pattern;
}

const PROFILES: ReadonlyMap<string, (o: ProfileOptions) => SparsityProfile> = new Map([
  ["uniform", () => uniform],
  ["owl", (o: ProfileOptions) => owlProfile({ lambda: o.owlLambda, m: o.owlM, pattern: o.pattern })],
]);

const UNCHECKED: ProfileOptions = { owlLambda: 0, owlM: 1, pattern: { kind: "unstructured" } };

/** The profile a resolved job runs, with its options. */
export function jobProfile(spec: { sparsityProfile: string; owlLambda: number; owlM: number; pattern: Pattern }): SparsityProfile {
  return sparsityProfile(spec.sparsityProfile, spec);
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
