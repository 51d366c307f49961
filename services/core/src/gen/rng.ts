/**
 * Seeded random numbers for the test-model generator. Every tensor gets its own stream derived
 * from (seed, logical key), so the fused and unfused graphs draw bit-identical weights even though
 * they create tensors in different orders and under different names.
 */

/** FNV-1a over the key, mixed with the seed: a cheap, stable 32-bit stream id. */
export function streamSeed(seed: number, key: string): number {
  let h = (0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // One avalanche round so that keys differing in their last character still diverge at once.
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  return h >>> 0;
}

/**
 * mulberry32: one multiply-xorshift chain per draw, which is what lets gigabytes of weights be
 * generated in seconds. Its 2^32 period is far beyond any single tensor.
 */
export class Rng {
  private state: number;
  private spare: number | undefined;

  constructor(seed: number) {
    this.state = seed | 0;
  }

  static forKey(seed: number, key: string): Rng {
    return new Rng(streamSeed(seed, key));
  }

  /** Uniform in [0, 1). */
  next(): number {
    let a = (this.state = (this.state + 0x6d2b79f5) | 0);
    a = Math.imul(a ^ (a >>> 15), a | 1);
    a ^= a + Math.imul(a ^ (a >>> 7), a | 61);
    return ((a ^ (a >>> 14)) >>> 0) / 4294967296;
  }

  /** Integer in [lo, hi] inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** Standard normal (Box-Muller); used for the small calibration arrays, not for weights. */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    const u = 1 - this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }

  /**
   * Fills dst[0, count) with uniform values in [center - halfWidth, center + halfWidth). The loop
   * is inlined (no per-element call) because this is the generator's hot path.
   */
  fillUniform(dst: Float32Array, count: number, center: number, halfWidth: number): void {
    let s = this.state;
    const scale = (2 * halfWidth) / 4294967296;
    const base = center - halfWidth;
    for (let i = 0; i < count; i++) {
      let a = (s = (s + 0x6d2b79f5) | 0);
      a = Math.imul(a ^ (a >>> 15), a | 1);
      a ^= a + Math.imul(a ^ (a >>> 7), a | 61);
      dst[i] = base + ((a ^ (a >>> 14)) >>> 0) * scale;
    }
    this.state = s;
  }
}
