/**
 * The profile phase of a JobPlan: a dense forward of every block with dense propagation (block
 * l+1 sees block l's dense output), each block summarised by the profile's blockFacts, then the
 * profile's per-linear targets from the facts of all blocks. Nothing is compressed; the pruning
 * phase then runs with these targets. In a cluster one worker computes the facts (RunProfile)
 * and the coordinator makes the targets.
 */
import type { LinearInfo } from "../graph/linears.js";
import type { LinearTargets, ProfilePrePass, SparsityProfile } from "../profiles/index.js";
import type { BlockEngine } from "./blockEngine.js";

export async function profileTargets(
  engine: BlockEngine, profile: SparsityProfile, input: { sparsity: number; linears: readonly (readonly LinearInfo[])[] },
  signal?: AbortSignal,
): Promise<LinearTargets> {
  const prePass = profile.prePass;
  const facts = prePass ? await profileFacts(engine, prePass, input.linears.length, signal) : [];
  return profile.targets({ ...input, facts });
}

/** Each block's facts, in block order, from the dense pre-pass over `blocks` blocks. */
export async function profileFacts(engine: BlockEngine, prePass: ProfilePrePass, blocks: number, signal?: AbortSignal): Promise<number[][]> {
  let states = await engine.initialStates();
  const facts: number[][] = [];
  for (let b = 0; b < blocks; b++) {
    const r = await engine.prePassBlock(b, states, prePass, { signal });
    facts.push(r.facts);
    states = r.next;
  }
  return facts;
}
