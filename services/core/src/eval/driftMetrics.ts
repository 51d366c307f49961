/**
 * The numbers `atvp eval` reports, accumulated sample by sample in float64: KL(dense ‖ pruned)
 * and top-1 agreement of the next-token distributions, next-token perplexity, and per block the
 * relative error of the pruned hidden state, pooled over text and over visual tokens.
 */

/** log-softmax of one row of logits. */
export function logSoftmax(row: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]!);
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) out[i] = row[i]! - lse;
  return out;
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

export class LogitDrift {
  private kl = 0;
  private agree = 0;
  private positions = 0;
  private nllDense = 0;
  private nllPruned = 0;
  private predicted = 0;

  /**
   * `dense`/`pruned`: [T, V] logits. KL and top-1 over text positions (attended, not image);
   * perplexity over attended positions t whose next token t+1 is an attended text token with a
   * known id (HF's shifted labels with image tokens and padding set to -100).
   */
  add(dense: ArrayLike<number>, pruned: ArrayLike<number>, vocab: number, attention: Uint8Array, image: Uint8Array, inputIds: BigInt64Array | undefined): void {
    const T = attention.length;
    const text = attention.map((a, t) => (a && !image[t] ? 1 : 0));
    const row = (a: ArrayLike<number>, t: number) => Array.prototype.slice.call(a, t * vocab, (t + 1) * vocab) as number[];
    for (let t = 0; t < T; t++) {
      const predicts = inputIds !== undefined && t + 1 < T && attention[t] === 1 && text[t + 1] === 1;
      if (!text[t] && !predicts) continue;
      const d = row(dense, t);
      const p = row(pruned, t);
      const ld = logSoftmax(d);
      const lp = logSoftmax(p);
      if (text[t]) {
        let kl = 0;
        for (let v = 0; v < vocab; v++) kl += Math.exp(ld[v]!) * (ld[v]! - lp[v]!);
        this.kl += kl;
        if (argmax(d) === argmax(p)) this.agree++;
        this.positions++;
      }
      if (predicts) {
        const target = Number(inputIds![t + 1]!);
        this.nllDense -= ld[target]!;
        this.nllPruned -= lp[target]!;
        this.predicted++;
      }
    }
  }

  result(): { kl_mean: number | null; top1_agreement: number | null; ppl_dense: number | null; ppl_pruned: number | null; text_positions: number; predicted_tokens: number } {
    const n = this.positions;
    const m = this.predicted;
    return {
      kl_mean: n === 0 ? null : this.kl / n,
      top1_agreement: n === 0 ? null : this.agree / n,
      ppl_dense: m === 0 ? null : Math.exp(this.nllDense / m),
      ppl_pruned: m === 0 ? null : Math.exp(this.nllPruned / m),
      text_positions: n,
      predicted_tokens: m,
    };
  }
}

/** sqrt(Σ‖Yp − Yd‖²) / sqrt(Σ‖Yd‖²) over text and over visual tokens of one block. */
export class BlockDrift {
  private readonly err = [0, 0];
  private readonly ref = [0, 0];

  /** `dense`/`pruned`: [T, H] hidden states; `kind[t]`: 0 text, 1 visual, -1 not counted (padding). */
  add(dense: ArrayLike<number>, pruned: ArrayLike<number>, hidden: number, kind: Int8Array): void {
    for (let t = 0; t < kind.length; t++) {
      const k = kind[t]!;
      if (k < 0) continue;
      for (let c = t * hidden; c < (t + 1) * hidden; c++) {
        const d = dense[c]!;
        const diff = pruned[c]! - d;
        this.err[k]! += diff * diff;
        this.ref[k]! += d * d;
      }
    }
  }

  result(): { rel_err_text: number | null; rel_err_visual: number | null } {
    const rel = (k: number) => (this.ref[k] === 0 ? null : Math.sqrt(this.err[k]!) / Math.sqrt(this.ref[k]!));
    return { rel_err_text: rel(0), rel_err_visual: rel(1) };
  }
}
