/**
 * The decoder's weight values, keyed by what they are (layer and role) rather than by their
 * initializer name. Both graph flavours draw from here, which is what makes a fused and an
 * unfused model generated with the same seed compute the same function.
 */
import type { DecoderConfig } from "./config.js";
import type { GraphBuilder } from "./graphBuilder.js";
import { Rng } from "./rng.js";

export type LinearRole = "q_proj" | "k_proj" | "v_proj" | "o_proj" | "gate_proj" | "up_proj" | "down_proj";
export type NormRole = "input_layernorm" | "post_attention_layernorm";

const RESIDUAL_GAIN = 4;

export class DecoderWeights {
  /** Linear (MatMul) weights created, in creation order. */
  readonly linears: string[] = [];

  constructor(private readonly b: GraphBuilder, private readonly cfg: DecoderConfig) {}

  /** Shape [in, out] of a layer's projection. */
  linearShape(role: LinearRole): [number, number] {
    const { hidden: h, heads, kvHeads, headDim, intermediate } = this.cfg;
    switch (role) {
      case "q_proj": return [h, heads * headDim];
      case "k_proj":
      case "v_proj": return [h, kvHeads * headDim];
      case "o_proj": return [heads * headDim, h];
      case "gate_proj":
      case "up_proj": return [h, intermediate];
      case "down_proj": return [intermediate, h];
    }
  }

  /** A projection of layer `layer` (or the lm_head when layer is undefined). */
  linear(name: string, layer: number | undefined, role: LinearRole | "lm_head"): string {
    const [inDim, outDim] = role === "lm_head" ? [this.cfg.hidden, this.cfg.vocab] : this.linearShape(role);
    const key = role === "lm_head" ? "lm_head" : `layers.${layer}.${role}`;
    // Uniform with variance 1/in keeps activations at unit scale through the stack. The
    // projections that write into the residual stream get a gain so that each layer turns the
    // hidden states by a visible angle, as trained LVLM layers do on visual tokens (without it
    // ATV's cosine distances stay near 0.01 and k rounds to 0).
    const gain = role === "o_proj" || role === "down_proj" ? RESIDUAL_GAIN : 1;
    const halfWidth = gain * Math.sqrt(3 / inDim);
    const rng = Rng.forKey(this.cfg.seed, key);
    this.linears.push(name);
    return this.b.floatWeight(name, [inDim, outDim], (dst, _start, n) => rng.fillUniform(dst, n, 0, halfWidth));
  }

  /** Norm scale; layer undefined is the final norm. Spread around 1 so it is not an identity. */
  normWeight(name: string, layer: number | undefined, role: NormRole | "norm"): string {
    const rng = Rng.forKey(this.cfg.seed, `${normKey(layer, role)}.weight`);
    return this.b.floatWeight(name, [this.cfg.hidden], (dst, _s, n) => rng.fillUniform(dst, n, 1, 0.25));
  }

  /** LayerNorm bias (norm "layer" only). */
  normBias(name: string, layer: number | undefined, role: NormRole | "norm"): string {
    const rng = Rng.forKey(this.cfg.seed, `${normKey(layer, role)}.bias`);
    return this.b.floatWeight(name, [this.cfg.hidden], (dst, _s, n) => rng.fillUniform(dst, n, 0, 0.1));
  }

  /**
   * Rotary table of cos or sin of position * inv_freq. `full` gives [positions, headDim] with the
   * half repeated (the HF rotate_half layout torch exports gather from); otherwise
   * [positions, headDim/2], the cos_cache/sin_cache the com.microsoft RotaryEmbedding takes.
   */
  rotaryTable(name: string, fn: "cos" | "sin", full: boolean): string {
    const half = this.cfg.headDim / 2;
    const width = full ? 2 * half : half;
    const invFreq = Array.from({ length: half }, (_, j) => this.cfg.ropeTheta ** (-(2 * j) / this.cfg.headDim));
    const f = fn === "cos" ? Math.cos : Math.sin;
    return this.b.floatWeight(name, [this.cfg.maxPositions, width], (dst, start, n) => {
      for (let i = 0; i < n; i++) {
        const e = start + i;
        const pos = Math.floor(e / width);
        dst[i] = f(pos * invFreq[(e % width) % half]!);
      }
    });
  }
}

function normKey(layer: number | undefined, role: NormRole | "norm"): string {
  return layer === undefined ? "norm" : `layers.${layer}.${role}`;
}
