/**
 * The mask contract (DESIGN.md §2 steps 4-5) read literally, for the mask tests: weights built
 * from logical rows in any stored type and layout, and a slow stable-sort reference mask.
 */
import type { MaskOptions, WeightMatrix } from "../../services/core/src/prune/maskSelect.js";
import { OnnxDataType, bfloat16ToFloat, floatToBfloat16, floatToHalf, halfToFloatTable } from "../../services/core/src/onnx/dtype.js";

export type Layout = "in_out" | "out_in";
const F32 = OnnxDataType.FLOAT;
const F16 = OnnxDataType.FLOAT16;

/** A weight from logical rows W[c][o], stored in the given type and layout. */
export function weight(rows: number[][], dataType: number = F32, layout: Layout = "in_out", name = "layer"): WeightMatrix {
  const inDim = rows.length;
  const outDim = rows[0]!.length;
  const at = (c: number, o: number) => (layout === "in_out" ? c * outDim + o : o * inDim + c);
  let bytes: Uint8Array;
  if (dataType === F32) {
    const v = new Float32Array(inDim * outDim);
    rows.forEach((row, c) => row.forEach((x, o) => (v[at(c, o)] = x)));
    bytes = new Uint8Array(v.buffer);
  } else {
    const encode = dataType === F16 ? floatToHalf : floatToBfloat16;
    const v = new Uint16Array(inDim * outDim);
    rows.forEach((row, c) => row.forEach((x, o) => (v[at(c, o)] = encode(x))));
    bytes = new Uint8Array(v.buffer);
  }
  return { name, dataType, layout, inDim, outDim, bytes };
}

/** The mask as logical rows [c][o] of 0/1. */
export function rowsOf(w: WeightMatrix, mask: Uint8Array): number[][] {
  return Array.from({ length: w.inDim }, (_, c) =>
    Array.from({ length: w.outDim }, (_, o) => mask[w.layout === "in_out" ? c * w.outDim + o : o * w.inDim + c]!));
}

/** The float32 value of a float16 or bfloat16 bit pattern. */
export function decode(dt: number, bits: number): number {
  return dt === F16 ? halfToFloatTable()[bits]! : bfloat16ToFloat(bits);
}

/** The float32 value of every stored element, in logical [in, out] order. */
export function logicalValues(w: WeightMatrix): Float32Array {
  const n = w.inDim * w.outDim;
  const copy = w.bytes.slice();
  const stored = w.dataType === F32
    ? new Float32Array(copy.buffer, 0, n)
    : Float32Array.from(new Uint16Array(copy.buffer, 0, n), (b) => decode(w.dataType, b));
  const out = new Float32Array(n);
  for (let c = 0; c < w.inDim; c++) {
    for (let o = 0; o < w.outDim; o++) out[c * w.outDim + o] = stored[w.layout === "in_out" ? c * w.outDim + o : o * w.inDim + c]!;
  }
  return out;
}

/** Stable sort of entries by M; the first `count` are pruned. */
function pruneFirst(entries: Array<{ m: number; at: number }>, count: number, into: number[][], place: (at: number) => [number, number]): void {
  const sorted = [...entries].sort((a, b) => a.m - b.m); // Array.prototype.sort is stable
  for (let i = 0; i < count; i++) {
    const [c, o] = place(sorted[i]!.at);
    into[c]![o] = 1;
  }
}

/** The contract read literally: a stable sort of (M, c) per column (per run of M for N:M, over the whole matrix for "matrix"). */
export function referenceMask(w: WeightMatrix, scale: Float64Array | null, opts: MaskOptions): number[][] {
  const v = logicalValues(w);
  const { inDim, outDim } = w;
  const out = Array.from({ length: inDim }, () => new Array<number>(outDim).fill(0));
  const metric = (c: number, o: number) => Math.abs(v[c * outDim + o]!) * (scale ? Math.sqrt(scale[c]!) : 1);
  if (opts.scope === "matrix") {
    const all = [];
    for (let c = 0; c < inDim; c++) for (let o = 0; o < outDim; o++) all.push({ m: metric(c, o), at: c * outDim + o });
    pruneFirst(all, Math.floor(inDim * outDim * opts.sparsity), out, (at) => [Math.floor(at / outDim), at % outDim]);
    return out;
  }
  for (let o = 0; o < outDim; o++) {
    if (opts.pattern.kind === "unstructured") {
      const col = Array.from({ length: inDim }, (_, c) => ({ m: metric(c, o), at: c }));
      pruneFirst(col, Math.floor(inDim * opts.sparsity), out, (c) => [c, o]);
    } else {
      const { n, m } = opts.pattern;
      for (let g = 0; g < inDim; g += m) {
        const group = Array.from({ length: m }, (_, i) => ({ m: metric(g + i, o), at: g + i }));
        pruneFirst(group, n, out, (c) => [c, o]);
      }
    }
  }
  return out;
}
