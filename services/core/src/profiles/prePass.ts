/**
 * A sparsity profile's pre-pass in one process: every block's dense forward with dense
 * propagation (block l+1 sees block l's unpruned output), each block's facts in block order.
 * The facts then go to the profile's targets; nothing is pruned here.
 */
import type { BlockEngine, RunBlockOptions } from "../pipeline/blockEngine.js";
import type { LinearInfo } from "../graph/linears.js";
import type { LinearTargets, ProfilePrePass, SparsityProfile } from "./sparsityProfile.js";

export async function runProfilePrePass(engine: BlockEngine, prePass: ProfilePrePass, blocks: number, options: RunBlockOptions = {}): Promise<number[][]> {
  let states = await engine.initialStates();
  const facts: number[][] = [];
  for (let b = 0; b < blocks; b++) {
    const r = await engine.prePassBlock(b, states, prePass, { signal: options.signal });
    facts.push(r.facts);
    states = r.next;
  }
  return facts;
}

/** The profile's per-linear targets: its pre-pass (if any) over every block, then its reduction. */
export async function profileTargets(engine: BlockEngine, profile: SparsityProfile, perBlock: readonly (readonly LinearInfo[])[], sparsity: number, options: RunBlockOptions = {}): Promise<LinearTargets> {
  const facts = profile.prePass ? await runProfilePrePass(engine, profile.prePass, perBlock.length, options) : [];
  return profile.targets({ sparsity, linears: perBlock, facts });
}
