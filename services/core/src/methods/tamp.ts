/**
 * TAMP (METHODS.md §3): Wanda's metric and per-output-column mask, with s[c] accumulated over
 * AMIA's per-linear, per-sample token subsets, at the per-linear sparsities of the DAS profile
 * (profiles/das.ts; uniform N/M for an N:M pattern, where the official code ignores DAS).
 */
import { CalibrationError } from "../errors.js";
import { tokenCounts } from "../calib/calibSet.js";
import { DAS_PROFILE } from "../profiles/das.js";
import type { Method, MethodDefinition } from "./method.js";
import { perLinearRecordBytes } from "./recordBytes.js";
import { AmiaSquares, amiaSquares } from "./tampStats.js";
import { ATTENDED_TOKENS } from "./tokenPools.js";
import { scaledMagnitudeMask } from "./wanda.js";

export const tamp: MethodDefinition = {
  name: "tamp",
  needsCalibration: true,
  shownOptions: [],
  // AMIA's sums of squares reduce like Wanda's; the DAS profile's dense pre-pass runs on one worker.
  replicable: true,
  recordBytes: perLinearRecordBytes,
  // The official code ignores DAS for N:M (T wanda_pruner.py:481-487).
  ownProfile: (pattern) => (pattern.kind === "nm" ? "uniform" : DAS_PROFILE),
  create(): Method<AmiaSquares> {
    return {
      name: "tamp",
      calibration: { pool: ATTENDED_TOKENS, accumulator: amiaSquares },
      checkSample(sample, where) {
        const { nText, nVisual } = tokenCounts(sample);
        if (nText + nVisual === 0) throw new CalibrationError(where, "the sample attends to no token; TAMP's AMIA needs a last attended token");
      },
      compress: scaledMagnitudeMask,
    };
  },
};
