/**
 * The magnitude baseline: M = |B[c, o]|, no calibration and no forward; one threshold per
 * matrix (Wanda's convention) or per output column.
 */
import { InvalidArgumentError } from "../errors.js";
import type { MaskResult } from "../prune/maskSelect.js";
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
      async compress({ weight, target, masks }) {
        const [{ mask, pruned }] = await masks.computeMasks([{ weight, scale: null, options: { sparsity: target.sparsity, pattern: target.pattern, scope: magnitudeScope } }]) as [MaskResult];
        return { kind: "mask", mask, pruned };
      },
    };
  },
};
