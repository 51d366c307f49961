/** The uniform profile: every selected linear gets the job's sparsity; no pre-pass. */
import type { SparsityProfile } from "./sparsityProfile.js";

export const uniform: SparsityProfile = {
  name: "uniform",
  prePass: undefined,
  targets: ({ sparsity, linears }) => new Map(linears.flat().map((l) => [l.weight, sparsity])),
};
