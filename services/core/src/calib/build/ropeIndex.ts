/**
 * Qwen2-VL / Qwen2.5-VL multimodal RoPE positions, as `get_rope_index` computes them for one
 * fully attended sequence of text and images: text counts up on all three axes; an image's
 * tokens take (t, h, w) grid coordinates (after the spatial merge) offset by the position where
 * the image starts; text after an image resumes at the largest position so far + 1. Images have
 * no time axis in Qwen2.5-VL (second_per_grid_t = 0), so t is 0 for every frame of an image.
 */
export interface ImageGrid { t: number; h: number; w: number }

/** Returns [3, T] row-major (temporal, height, width). */
export function ropeIndex(inputIds: ArrayLike<number>, imageTokenId: number, grids: readonly ImageGrid[], mergeSize: number): BigInt64Array {
  const T = inputIds.length;
  const out = new BigInt64Array(3 * T);
  let next = 0; // max position so far + 1
  let t = 0;
  let image = 0;
  const put = (i: number, a: number, b: number, c: number) => { out[i] = BigInt(a); out[T + i] = BigInt(b); out[2 * T + i] = BigInt(c); };
  while (t < T) {
    if (inputIds[t] !== imageTokenId) {
      put(t, next, next, next);
      next++;
      t++;
      continue;
    }
    const g = grids[image++];
    if (!g) throw new RangeError(`image token at ${t} but only ${grids.length} image grids`);
    const gh = g.h / mergeSize;
    const gw = g.w / mergeSize;
    const count = g.t * gh * gw;
    const start = next;
    let max = start;
    for (let k = 0; k < count; k++) {
      const h = Math.floor(k / gw) % gh;
      const w = k % gw;
      put(t + k, start, start + h, start + w);
      max = Math.max(max, start + h, start + w);
    }
    next = max + 1;
    t += count;
  }
  if (image !== grids.length) throw new RangeError(`${grids.length} image grids but ${image} images in the tokens`);
  return out;
}
