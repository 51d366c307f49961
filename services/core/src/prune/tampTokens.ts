/**
 * What TAMP reads from one sample's forward (METHODS.md §3, "What depends on the LVLM"): the
 * attended tokens' rows of a linear's output with their image flags, and the attention of the
 * last attended token, averaged over heads.
 */
import type { CalibSample } from "../calib/calibSet.js";
import { NumericError } from "../errors.js";
import { ortFloats } from "../runtime/ortFloats.js";
import type { WireTensor } from "../runtime/wireTensor.js";
import type { TokenRows } from "./tampDensity.js";

export interface AttendedRows {
  rows: TokenRows;
  /** 1 for an image token, per attended token */
  visual: Uint8Array;
  /** the attended positions, ascending */
  positions: number[];
}

/** The rows of `t` ([.., T, d]) at the sample's attended positions. */
export function attendedRows(t: WireTensor, sample: CalibSample, subject: string): AttendedRows {
  const dim = t.dims[t.dims.length - 1]!;
  const values = ortFloats(t, subject);
  const T = values.length / dim;
  if (T !== sample.attentionMask.length) throw new NumericError(subject, `tensor has ${T} tokens, the sample ${sample.attentionMask.length}`);
  const positions: number[] = [];
  for (let p = 0; p < T; p++) if (sample.attentionMask[p]) positions.push(p);
  const data = new Float64Array(positions.length * dim);
  positions.forEach((p, i) => { for (let c = 0; c < dim; c++) data[i * dim + c] = values[p * dim + c]!; });
  return { rows: { data, tokens: positions.length, dim }, visual: Uint8Array.from(positions, (p) => sample.imageMask[p]!), positions };
}

/**
 * a[k] = mean over heads of probs[h, q, positions[k]], q the last attended position (TAMP
 * wanda_pruner.py:377-448; the paper's AMIA: a = A[−1, :]).
 */
export function lastTokenAttention(probs: WireTensor, positions: readonly number[], subject: string): Float64Array {
  const [batch, heads, tq, tk] = probs.dims as [number, number, number, number];
  if (probs.dims.length !== 4 || batch !== 1) throw new NumericError(subject, `attention probabilities of shape [${probs.dims.join(", ")}]; expected [1, heads, T, T]`);
  const values = ortFloats(probs, subject);
  const q = positions[positions.length - 1]!;
  if (q >= tq) throw new NumericError(subject, `attention probabilities have ${tq} query rows; the last attended token is ${q}`);
  const a = new Float64Array(positions.length);
  for (let h = 0; h < heads; h++) {
    const base = (h * tq + q) * tk;
    positions.forEach((p, k) => { a[k]! += values[base + p]!; });
  }
  for (let k = 0; k < a.length; k++) a[k]! /= heads;
  return a;
}
