/**
 * ATV-Pruning (DESIGN.md §2): Wanda's metric, with s[c] accumulated over ATV's token pool (all
 * text tokens plus the k_j visual tokens this block changes most). As in the official code,
 * WrappedATV differs from WrappedWanda only in which tokens feed add_batch.
 */
import { CalibrationError } from "../errors.js";
import { tokenCounts } from "../calib/calibSet.js";
import { ChannelSquares, channelSquares } from "./channelSquares.js";
import { channelRecordBytes, distanceRecordBytes } from "./recordBytes.js";
import type { Method, MethodDefinition } from "./method.js";
import { atvTokens } from "./tokenPools.js";
import { scaledMagnitudeMask } from "./wanda.js";

export const atv: MethodDefinition = {
  name: "atv",
  needsCalibration: true,
  shownOptions: ["alpha"],
  replicable: true,
  recordBytes: (linears, tokens) => distanceRecordBytes(tokens) + channelRecordBytes(linears),
  statsInGraph: true,
  create({ alpha }): Method<ChannelSquares> {
    return {
      name: "atv",
      calibration: { pool: atvTokens(alpha), accumulator: channelSquares },
      checkSample(sample, where) {
        if (tokenCounts(sample).nText === 0) {
          throw new CalibrationError(where, "the sample has no text tokens: ATV's pool would be empty (k = round(ratio * nText) = 0); remove it or mark its text tokens in image_mask");
        }
      },
      compress: scaledMagnitudeMask,
    };
  },
};
