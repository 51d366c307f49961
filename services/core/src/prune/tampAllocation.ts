/**
 * TAMP's DAS budget allocation (METHODS.md §3 step 3, G-JWLee/TAMP
 * llava/pruners/layer_single_base_pruner.py:522-592): each linear is its own group, keeps a share
 * of the model's kept parameters in proportion to its score, never drops below 1 − s_max, and
 * its sparsity is 1 − keep/n. The official code runs in float32 torch tensors (keep turns float32
 * after the first addition); Math.fround reproduces every rounding step, and the overshoot branch
 * keeps its `+=` where `-=` was meant (line 577), as the contract asks.
 */
import { InvalidArgumentError } from "../errors.js";

const f = Math.fround;

export interface TampAllocation {
  /** parameters kept per linear (float32 values, as the official tensor holds them) */
  keep: number[];
  /** s_i = clamp(fl32(1 − fl32(keep_i / n_i)), 0, 1) */
  sparsity: number[];
}

/**
 * @param params n_i = in·out per linear
 * @param scores DAS score per linear (stored as float32, as torch.FloatTensor does)
 */
export function tampAllocate(params: readonly number[], scores: readonly number[], sparsity: number, maxSparsity: number): TampAllocation {
  if (params.length !== scores.length) throw new InvalidArgumentError("scores", `${scores.length} scores for ${params.length} linears`);
  if (!(maxSparsity >= sparsity && maxSparsity <= 1)) throw new InvalidArgumentError("tampMaxSparsity", `must be in [sparsity, 1], got ${maxSparsity} with sparsity ${sparsity}`);
  const total = Math.trunc(params.reduce((a, b) => a + b, 0) * (1 - sparsity));
  const n32 = params.map((n) => f(n));
  const sc = scores.map((s) => f(s));
  const minKeep32 = f(1 - maxSparsity);
  // keep starts as an int64 tensor: ceil(n·(1 − s_max)) computed in float32.
  let keep = params.map((_, i) => Math.ceil(f(n32[i]! * minKeep32)));
  let isFloat = false;
  const sumKeep = (): number => (isFloat ? sum32(keep) : keep.reduce((a, b) => a + b, 0));
  const totalAs = (): number => (isFloat ? f(total) : total);

  while (sumKeep() < totalAs()) {
    const ratio = sum32(sc);
    const rest = isFloat ? f(f(total) - sumKeep()) : total - sumKeep();
    const add = sc.map((s) => Math.ceil(f(f(s / ratio) * f(rest))));
    keep = keep.map((k, i) => f(k + add[i]!));
    isFloat = true;
    keep.forEach((k, i) => { if (k >= n32[i]!) sc[i] = 0; });
    keep = keep.map((k, i) => Math.min(k, n32[i]!));

    if (sum32(add) === 0) {
      // Stuck: hand the remainder to the linears that can still grow, in index order.
      const current = sumKeep();
      if (current < f(total)) {
        let need = f(f(total) - current);
        while (need > 0) {
          let moved = false;
          for (let i = 0; i < keep.length && need > 0; i++) {
            if (!(sc[i]! > 0)) continue;
            const can = Math.min(need, f(n32[i]! - keep[i]!));
            keep[i] = f(keep[i]! + can);
            need = f(need - can);
            if (can > 0) moved = true;
          }
          if (!moved) break; // the official loop would spin forever here
        }
      }
    }
    if (sumKeep() > f(total)) {
      // Overshoot: the official code means to remove the excess from the largest linears, but adds it.
      let need = f(sumKeep() - f(total));
      while (need > 0) {
        let moved = false;
        const order = keep.map((_, i) => i).sort((a, b) => keep[b]! - keep[a]! || a - b);
        for (const i of order) {
          const floor = Math.trunc(f(n32[i]! * minKeep32));
          const can = Math.min(need, f(keep[i]! - floor));
          keep[i] = f(keep[i]! + can);
          need = f(need - can);
          if (can > 0) moved = true;
          if (need === 0) break;
        }
        if (!moved) break;
      }
    }
  }
  const out = keep.map((k, i) => Math.min(1, Math.max(0, f(1 - f(f(k) / n32[i]!)))));
  return { keep, sparsity: out };
}

/** A float32 tensor's sum, accumulated in order (exact while the sums stay below 2^24). */
function sum32(values: readonly number[]): number {
  let s = 0;
  for (const v of values) s = f(s + v);
  return s;
}
