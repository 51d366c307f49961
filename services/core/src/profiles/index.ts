/** Sparsity profiles by name (OWL and TAMP's DAS join uniform here). */
import { InvalidArgumentError } from "../errors.js";
import type { SparsityProfile } from "./sparsityProfile.js";
import { uniform } from "./uniform.js";

export type * from "./sparsityProfile.js";

const PROFILES: ReadonlyMap<string, SparsityProfile> = new Map([uniform].map((p) => [p.name, p]));

export function profileNames(): string[] {
  return [...PROFILES.keys()];
}

export function sparsityProfile(name: string, field = "sparsityProfile"): SparsityProfile {
  const p = PROFILES.get(name);
  if (!p) throw new InvalidArgumentError(field, `must be one of ${profileNames().join(", ")}, got ${JSON.stringify(name)}`);
  return p;
}
