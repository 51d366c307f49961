/**
 * The committed cost table (`atvp plan` without --cost): measured with `atvp plan --calibrate`
 * on the machine named below. Predictions for other machines need their own table.
 */
import type { CostTable } from "./costTable.js";

export const DEFAULT_COST_TABLE: CostTable = {
  "machine": {
    "cpu": "Intel(R) Xeon(R) Processor",
    "cores": 2,
    "platform": "linux-x64",
    "node": "v24.22.3",
    "device": "cpu",
    "threads": 0
  },
  "measuredAt": "2026-12-01T03:15:55.836Z",
  "methods": {
    "atv": {
      "secondsPerTokenParam": 1.2010441081864491e-10,
      "blocks": 4,
      "tokens": 1024,
      "paramsPerBlock": 802816
    },
    "wanda": {
      "secondsPerTokenParam": 1.1399660274690511e-10,
      "blocks": 4,
      "tokens": 1024,
      "paramsPerBlock": 802816
    },
    "sparsegpt": {
      "secondsPerTokenParam": 9.438905363180198e-10,
      "blocks": 4,
      "tokens": 1024,
      "paramsPerBlock": 802816
    }
  }
};
