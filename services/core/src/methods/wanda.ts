/**
 * Wanda (DESIGN.md §2): every attended token counts; M[c, o] = |B[c, o]| * sqrt(s[c]); the
 * smallest of each output column are pruned.
 */
import type { MaskResult } from "../prune/maskSelect.js";
import { ChannelSquares, channelSquares } from "./channelSquares.js";
import { channelRecordBytes } from "./recordBytes.js";
import type { CompressInput, Compression, Method, MethodDefinition } from "./method.js";
import { ATTENDED_TOKENS } from "./tokenPools.js";

/** Wanda's and ATV's compress step: one mask from the metric, per output column. */
export async function scaledMagnitudeMask({ weight, stats, samples, target, masks }: CompressInput<ChannelSquares>): Promise<Compression> {
  const [{ mask, pruned }] = await masks.computeMasks([{ weight, scale: stats!.mean(samples), options: { sparsity: target.sparsity, pattern: target.pattern, scope: "column" } }]) as [MaskResult];
  return { kind: "mask", mask, pruned };
}

export const wanda: MethodDefinition = {
  name: "wanda",
  needsCalibration: true,
  shownOptions: [],
  replicable: true,
  recordBytes: channelRecordBytes,
  statsInGraph: true,
  create(): Method<ChannelSquares> {
    return { name: "wanda", calibration: { pool: ATTENDED_TOKENS, accumulator: channelSquares }, compress: scaledMagnitudeMask };
  },
};
