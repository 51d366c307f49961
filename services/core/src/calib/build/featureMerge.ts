/**
 * The merge a transformers.js VLM does itself (masked_scatter): the image-feature rows, in
 * order, replace the embeddings at the image-token positions; all other rows keep the text
 * embedding.
 */
export function mergeImageFeatures(embeds: Float32Array, hidden: number, inputIds: ArrayLike<number>, imageTokenId: number, features: Float32Array): Float32Array {
  const out = embeds.slice();
  const rows = features.length / hidden;
  let n = 0;
  for (let t = 0; t < inputIds.length; t++) {
    if (inputIds[t] !== imageTokenId) continue;
    if (n >= rows) throw new RangeError(`more image tokens than image-feature rows (${rows})`);
    out.set(features.subarray(n * hidden, (n + 1) * hidden), t * hidden);
    n++;
  }
  if (n !== rows) throw new RangeError(`${rows} image-feature rows for ${n} image tokens`);
  return out;
}
