/**
 * TAMP's two accumulators (METHODS.md §3), one per weight matrix since q, k and v share an input
 * but not an output: the DAS density of the linear's output over the samples (the profile's
 * pre-pass), and Wanda's channel sums of squares over the AMIA token subset of each sample.
 */
import type { LinearInfo } from "../graph/linears.js";
import { amiaSelect } from "../prune/amiaSelect.js";
import { DasScore, densityOf, normalizeRows } from "../prune/tampDensity.js";
import { attendedRows, lastTokenAttention } from "../prune/tampTokens.js";
import { ChannelSquares } from "./channelSquares.js";
import type { Accumulator, AccumulatorInput, AccumulatorSpec } from "./method.js";

export class DasDensity implements Accumulator {
  readonly das: DasScore;

  constructor(linear: string) {
    this.das = new DasScore(linear);
  }

  add({ output, sample, subject, solver }: AccumulatorInput): void | Promise<void> {
    const { rows, visual } = attendedRows(output!, sample!, subject);
    // On a solve thread where the job has them; the engine awaits it before the next sample.
    if (solver?.density) return solver.density(rows, visual).then((d) => this.das.add(d));
    this.das.add(densityOf(normalizeRows(rows), rows.dim, visual));
  }
}

export function dasDensity(linear: LinearInfo): AccumulatorSpec<DasDensity> {
  return { key: `das:${linear.weight}`, needsOutput: true, create: () => new DasDensity(linear.weight) };
}

/** s[c] summed over each sample's AMIA subset S_j (the official division by Σ|S_j| changes no ranking). */
export class AmiaSquares extends ChannelSquares {
  override add(input: AccumulatorInput): void | Promise<void> {
    const { output, attention, sample, subject, solver } = input;
    const { rows, visual, positions } = attendedRows(output!, sample!, subject);
    const a = lastTokenAttention(attention!, positions, subject);
    const addSubset = ({ selected }: { selected: Uint8Array }) => {
      const pool = new Uint8Array(sample!.attentionMask.length);
      positions.forEach((p, k) => { pool[p] = selected[k]!; });
      super.add({ ...input, pool });
    };
    if (solver?.amia) return solver.amia(rows, a, visual).then(addSubset);
    addSubset(amiaSelect(rows, a, visual));
  }
}

export function amiaSquares(linear: LinearInfo): AccumulatorSpec<AmiaSquares> {
  return { key: `amia:${linear.weight}`, needsOutput: true, needsAttention: true, create: () => new AmiaSquares(linear.activation, linear.inDim) };
}
