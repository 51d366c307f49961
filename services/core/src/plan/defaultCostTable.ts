/**
 * The committed cost table (`atvp plan` without --cost): measured with `atvp plan --calibrate`
 * (every core) on the machine named below. Predictions for other machines need their own table.
 */
import type { CostTable } from "./costTable.js";

export const DEFAULT_COST_TABLE: CostTable = {
  "machine": {
    "cpu": "AMD EPYC",
    "cores": 2,
    "platform": "linux-x64",
    "node": "v24.22.3",
    "device": "cpu",
    "threads": 0
  },
  "measuredAt": "2026-12-03T19:48:32.544Z",
  "methods": {
    "atv": {
      "secondsPerTokenParam": 1.3545580405850984e-11,
      "secondsPerSample": 0.00836652412622548,
      "secondsPerCompressUnit": 8.40349897466534e-09,
      "blocks": 12,
      "tokens": 2048,
      "paramsPerBlock": 12845056,
      "widths": [256, 512, 1024]
    },
    "wanda": {
      "secondsPerTokenParam": 1.643748896866046e-11,
      "secondsPerSample": 0.006876908300245078,
      "secondsPerCompressUnit": 6.406782841278961e-09,
      "blocks": 12,
      "tokens": 2048,
      "paramsPerBlock": 12845056,
      "widths": [256, 512, 1024]
    },
    "sparsegpt": {
      "secondsPerTokenParam": 3.368357441158185e-11,
      "secondsPerSample": 0.027043067462189405,
      "secondsPerCompressUnit": 1.913735209497246e-10,
      "blocks": 12,
      "tokens": 2048,
      "paramsPerBlock": 12845056,
      "widths": [256, 512, 1024]
    }
  }
};
