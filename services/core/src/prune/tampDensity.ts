/**
 * TAMP's output-token density (METHODS.md §3, DAS step 1 and AMIA step 2; G-JWLee/TAMP
 * llava/pruners/layer_single_base_pruner.py:14-31 and 132-162): from a linear's output rows on one
 * sample, the mean positive cosine similarity within the visual tokens (v), within the text tokens
 * (l), and the mean cosine similarity across them (vl). DAS averages them over samples and scores
 * the linear; AMIA's stopping threshold reads their mean ρ on one sample.
 */
import { CalibrationError } from "../errors.js";

/** Row-major rows `[T, d]` of one sample's tokens (attended tokens only, in order). */
export interface TokenRows {
  data: ArrayLike<number>;
  tokens: number;
  dim: number;
}

/**
 * Each row divided by its L2 norm. A zero row stays zero: the norm is floored at 1e-12, as
 * torch.nn.functional.normalize does.
 */
export function normalizeRows({ data, tokens, dim }: TokenRows): Float64Array {
  const out = new Float64Array(tokens * dim);
  for (let t = 0; t < tokens; t++) {
    let sq = 0;
    for (let c = 0; c < dim; c++) sq += data[t * dim + c]! ** 2;
    const norm = Math.max(Math.sqrt(sq), 1e-12);
    for (let c = 0; c < dim; c++) out[t * dim + c] = data[t * dim + c]! / norm;
  }
  return out;
}

export interface Density {
  /** mean of the strictly positive entries of the strict upper triangle of O_v·O_vᵀ; NaN if none */
  v: number;
  /** the same over the text tokens */
  l: number;
  /** mean of all entries of O_v·O_lᵀ; NaN when a modality has no token */
  vl: number;
}

/**
 * The density components of one sample. `normalized` holds the L2-normalised rows (normalizeRows),
 * `visual[t]` is 1 for an image token and 0 for a text token.
 */
export function densityOf(normalized: Float64Array, dim: number, visual: ArrayLike<number>): Density {
  const vis: number[] = [];
  const txt: number[] = [];
  for (let t = 0; t < visual.length; t++) (visual[t] ? vis : txt).push(t);
  const dot = (a: number, b: number): number => {
    let s = 0;
    for (let c = 0; c < dim; c++) s += normalized[a * dim + c]! * normalized[b * dim + c]!;
    return s;
  };
  const positiveUpper = (ts: number[]): number => {
    let sum = 0;
    let n = 0;
    for (let i = 0; i < ts.length; i++) {
      for (let k = i + 1; k < ts.length; k++) {
        const s = dot(ts[i]!, ts[k]!);
        if (s > 0) { sum += s; n++; }
      }
    }
    return n === 0 ? NaN : sum / n;
  };
  let cross = 0;
  for (const a of vis) for (const b of txt) cross += dot(a, b);
  return { v: positiveUpper(vis), l: positiveUpper(txt), vl: vis.length && txt.length ? cross / (vis.length * txt.length) : NaN };
}

/** ρ = (v + l + vl) / 3 on one sample (NaN when a component is). */
export function densityRho({ v, l, vl }: Density): number {
  return (v + l + vl) / 3;
}

/**
 * One linear's DAS score over the calibration samples: each component averaged over the samples
 * whose three components are all defined (a sample with a NaN component is left out, METHODS §3
 * "No valid pair"), then (1 − v̄) + (1 − l̄) + (1 − vl̄). Fails when no sample has both modalities
 * with a positive pair in each, since the official code would divide by zero there.
 */
export class DasScore {
  private sums = { v: 0, l: 0, vl: 0 };
  private count = 0;

  constructor(private readonly linear: string) {}

  add(d: Density): void {
    if (Number.isNaN(d.v) || Number.isNaN(d.l) || Number.isNaN(d.vl)) return;
    this.sums.v += d.v;
    this.sums.l += d.l;
    this.sums.vl += d.vl;
    this.count++;
  }

  score(): number {
    if (this.count === 0) {
      throw new CalibrationError(this.linear, "TAMP's DAS score has no sample with both visual and text tokens (and a positively similar pair in each): add calibration samples that have both modalities");
    }
    const n = this.count;
    return (1 - this.sums.v / n) + (1 - this.sums.l / n) + (1 - this.sums.vl / n);
  }
}
