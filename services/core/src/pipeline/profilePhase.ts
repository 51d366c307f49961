/**
 * The profile phase of a JobPlan in one process: a dense forward of every block with dense
 * propagation (block l+1 sees block l's dense output), each block summarised by the profile's
 * blockFacts, then the profile's per-linear targets from the facts of all blocks. Nothing is
 * compressed; the pruning phase then runs with these targets.
 */
import type { LinearInfo } from "../graph/linears.js";
import type { LinearTargets, SparsityProfile } from "../profiles/index.js";
import type { BlockEngine } from "./blockEngine.js";

export async function profileTargets(
  engine: BlockEngine, profile: SparsityProfile, input: { sparsity: number; linears: readonly (readonly LinearInfo[])[] },
  signal?: AbortSignal,
): Promise<LinearTargets> {
  const prePass = profile.prePass;
  if (!prePass) return profile.targets({ ...input, facts: [] });
  let states = await engine.initialStates();
  const facts: number[][] = [];
  for (let b = 0; b < input.linears.length; b++) {
    const r = await engine.prePassBlock(b, states, prePass, { signal });
    facts.push(r.facts);
    states = r.next;
  }
  return profile.targets({ ...input, facts });
}
