/**
 * The magnitude baseline: M = |B[c, o]|, no calibration and no forward; one threshold per
 * matrix (Wanda's convention) or per output column.
 */
import { InvalidArgumentError } from "../errors.js";
import { computeMask } from "../prune/maskSelect.js";
import type { Method, MethodDefinition } from "./method.js";

export const magnitude: MethodDefinition = {
  name: "magnitude",
  needsCalibration: false,
  shownOptions: [],
  checkOptions({ magnitudeScope, pattern }) {
    if (magnitudeScope === "matrix" && pattern.kind !== "unstructured") {
      throw new InvalidArgumentError("pattern", "magnitude with one threshold per matrix is unstructured; use --magnitude-scope column for N:M");
    }
  },
  create({ magnitudeScope }): Method {
    return {
      name: "magnitude",
      calibration: undefined,
      compress({ weight, target }) {
        const { mask, pruned } = computeMask(weight, null, { sparsity: target.sparsity, pattern: target.pattern, scope: magnitudeScope });
        return { kind: "mask", mask, pruned };
      },
    };
  },
};
