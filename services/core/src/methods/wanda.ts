/**
 * Wanda (DESIGN.md §2): every attended token counts; M[c, o] = |B[c, o]| * sqrt(s[c]); the
 * smallest of each output column are pruned.
 */
import { computeMask } from "../prune/maskSelect.js";
import { ChannelSquares, channelSquares } from "./channelSquares.js";
import type { CompressInput, Compression, Method, MethodDefinition } from "./method.js";
import { ATTENDED_TOKENS } from "./tokenPools.js";

/** Wanda's and ATV's compress step: one mask from the metric, per output column. */
export function scaledMagnitudeMask({ weight, stats, samples, target }: CompressInput<ChannelSquares>): Compression {
  const { mask, pruned } = computeMask(weight, stats!.mean(samples), { sparsity: target.sparsity, pattern: target.pattern, scope: "column" });
  return { kind: "mask", mask, pruned };
}

export const wanda: MethodDefinition = {
  name: "wanda",
  needsCalibration: true,
  shownOptions: [],
  create(): Method<ChannelSquares> {
    return { name: "wanda", calibration: { pool: ATTENDED_TOKENS, accumulator: channelSquares }, compress: scaledMagnitudeMask };
  },
};
