/**
 * Which weights of one linear layer get pruned: the mask every mode of atv-prune must agree on
 * bit for bit (ATV-Pruning and Wanda metric |W|*sqrt(s), or plain magnitude).
 *
 * The contract, per output channel o (a column of the logical [in, out] matrix):
 *   M[c,o] = |W[c,o]| * sqrt(s[c]) in float64 (W read to float32 first); magnitude: M = |W[c,o]|.
 *   unstructured: prune exactly floor(in * sparsity) smallest M, ties -> lower c first.
 *   N:M: in every run of M consecutive c, prune the N smallest M, ties -> lower c first.
 *   magnitude "matrix" scope: prune floor(in*out*sparsity) smallest |W| of the whole matrix,
 *   ties -> lower (c, o) in row-major [in, out] order.
 * The mask is computed separately from applying it, so callers can compute every mask of a block
 * from unmodified weights before zeroing any.
 *
 * Speed: columns are handled in tiles so the row-major [in, out] storage is read a cache line at
 * a time, and the k-th smallest of a column is found by bracketing it between two values of a
 * small sorted sample (one pass) and sorting only what falls inside the bracket; when the bracket
 * misses, the column is sorted whole. Either way the result is exact.
 */
import { InvalidArgumentError, NumericError, UnsupportedTypeError } from "../errors.js";
import { OnnxDataType as DT, halfToFloatTable, typeName } from "../onnx/dtype.js";

export type Pattern = { kind: "unstructured" } | { kind: "nm"; n: number; m: number };

export function parsePattern(text: string): Pattern {
  const t = text.trim().toLowerCase();
  if (t === "unstructured") return { kind: "unstructured" };
  const match = /^(\d+):(\d+)$/.exec(t);
  if (match) {
    const n = Number(match[1]);
    const m = Number(match[2]);
    if (Number.isSafeInteger(m) && n > 0 && n < m) return { kind: "nm", n, m };
  }
  throw new InvalidArgumentError("pattern", `"${text}" is not "unstructured" or "N:M" with 0 < N < M (e.g. 2:4)`);
}

export interface WeightMatrix {
  name: string;
  dataType: number;
  /** "in_out": MatMul B, [in, out] row-major. "out_in": Gemm B with transB=1, [out, in] row-major. */
  layout: "in_out" | "out_in";
  inDim: number;
  outDim: number;
  /** Raw little-endian element bits, inDim*outDim elements; may not be aligned to the element size. */
  bytes: Uint8Array;
}

export interface MaskOptions {
  sparsity: number;
  pattern: Pattern;
  /** Default "column". "matrix" only with scale null and the unstructured pattern. */
  scope?: "column" | "matrix";
}

export interface MaskResult {
  /** One byte per stored element, in storage order; 1 = pruned. */
  mask: Uint8Array;
  pruned: number;
  total: number;
}

export function computeMask(w: WeightMatrix, scale: Float64Array | null, opts: MaskOptions): MaskResult {
  const sparsity = opts.sparsity;
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new InvalidArgumentError("sparsity", `must be in [0, 1), got ${String(sparsity)}`);
  }
  const pattern = checkPattern(opts.pattern);
  const view = readView(w);
  const total = w.inDim * w.outDim;
  const mask = new Uint8Array(total);

  if ((opts.scope ?? "column") === "matrix") {
    if (scale !== null || pattern.kind !== "unstructured") {
      throw new InvalidArgumentError("scope", `"matrix" scope is the magnitude baseline: it needs no scale and the unstructured pattern (layer ${w.name})`);
    }
    const pruned = markMatrixSmallest(w, view, Math.floor(total * sparsity), mask);
    return { mask, pruned, total };
  }
  if (opts.scope !== undefined && opts.scope !== "column") {
    throw new InvalidArgumentError("scope", `must be "column" or "matrix", got ${String(opts.scope)}`);
  }
  if (pattern.kind === "nm" && w.inDim % pattern.m !== 0) {
    throw new InvalidArgumentError(w.name, `input dimension ${w.inDim} is not a multiple of M=${pattern.m} for the ${pattern.n}:${pattern.m} pattern`);
  }
  const reader = new MetricReader(w, view, sqrtOfScale(w, scale));
  const pruned = pattern.kind === "nm"
    ? markNMColumns(w, reader, pattern.n, pattern.m, mask)
    : markSmallestColumns(w, reader, Math.floor(w.inDim * sparsity), mask);
  return { mask, pruned, total };
}

/** Zeroes (to +0 bits) every stored element whose mask byte is set. */
export function applyMask(w: WeightMatrix, mask: Uint8Array): void {
  const total = w.inDim * w.outDim;
  const size = elemSize(w);
  if (mask.length !== total || w.bytes.length !== total * size) {
    throw new InvalidArgumentError(w.name, `mask of ${mask.length} entries / ${w.bytes.length} bytes do not fit a ${w.inDim}x${w.outDim} weight`);
  }
  const b = w.bytes;
  for (let i = 0; i < total; i++) {
    if (mask[i] !== 0) b.fill(0, i * size, i * size + size);
  }
}

// ---------------------------------------------------------------------------------------------
// Reading weights

/** The weight's elements as a typed view plus a table turning stored bits into |W| as float32. */
interface ReadView {
  /** float32 weights. */
  f32: Float32Array | null;
  /** float16 / bfloat16 bit patterns. */
  u16: Uint16Array | null;
  /** |value| of a 2-byte pattern with its sign bit cleared (index: bits & 0x7fff). */
  absTable: Float32Array | null;
}

function elemSize(w: WeightMatrix): number {
  if (w.dataType === DT.FLOAT) return 4;
  if (w.dataType === DT.FLOAT16 || w.dataType === DT.BFLOAT16) return 2;
  throw new UnsupportedTypeError(w.name, `weights of type ${typeName(w.dataType)} cannot be pruned (float32, float16 and bfloat16 can)`);
}

function readView(w: WeightMatrix): ReadView {
  const size = elemSize(w);
  if (!(Number.isSafeInteger(w.inDim) && Number.isSafeInteger(w.outDim) && w.inDim > 0 && w.outDim > 0)) {
    throw new InvalidArgumentError(w.name, `bad weight shape ${w.inDim}x${w.outDim}`);
  }
  const total = w.inDim * w.outDim;
  if (w.bytes.length !== total * size) {
    throw new InvalidArgumentError(w.name, `${w.bytes.length} bytes do not hold a ${w.inDim}x${w.outDim} ${typeName(w.dataType)} weight`);
  }
  // Typed views need alignment; a misaligned slice of a model file is copied once.
  const bytes = w.bytes.byteOffset % size === 0 ? w.bytes : w.bytes.slice();
  if (size === 4) return { f32: new Float32Array(bytes.buffer, bytes.byteOffset, total), u16: null, absTable: null };
  const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, total);
  return { f32: null, u16, absTable: w.dataType === DT.FLOAT16 ? halfToFloatTable() : bfloat16Table() };
}

let bf16Table: Float32Array | undefined;

/** float32 value of every bfloat16 bit pattern (built once, read-only after). */
function bfloat16Table(): Float32Array {
  if (bf16Table) return bf16Table;
  const bits = new Uint32Array(65536);
  for (let b = 0; b < 65536; b++) bits[b] = b << 16;
  bf16Table = new Float32Array(bits.buffer);
  return bf16Table;
}

function sqrtOfScale(w: WeightMatrix, scale: Float64Array | null): Float64Array {
  const sq = new Float64Array(w.inDim);
  if (scale === null) return sq.fill(1); // |W| * 1 is exactly |W|: magnitude shares the column path
  if (scale.length !== w.inDim) {
    throw new InvalidArgumentError(w.name, `scale has ${scale.length} entries, the layer has ${w.inDim} input channels`);
  }
  for (let c = 0; c < w.inDim; c++) sq[c] = Math.sqrt(scale[c]!);
  return sq;
}

function checkPattern(p: Pattern): Pattern {
  if (p.kind === "unstructured") return p;
  if (p.kind === "nm" && Number.isSafeInteger(p.n) && Number.isSafeInteger(p.m) && p.n > 0 && p.n < p.m) return p;
  throw new InvalidArgumentError("pattern", `bad pattern ${JSON.stringify(p)}: need 0 < N < M`);
}

// ---------------------------------------------------------------------------------------------
// Per-column selection

/** Columns handled together: 32 float16 columns of a row are one 64-byte cache line. */
const TILE = 32;

/** Reads M[c,o] for any weight type and layout. */
class MetricReader {
  private readonly inDim: number;
  // Element (c, o) sits at c*cStride + o*oStride in storage.
  private readonly cStride: number;
  private readonly oStride: number;

  constructor(private readonly w: WeightMatrix, private readonly view: ReadView, private readonly sq: Float64Array) {
    this.inDim = w.inDim;
    this.cStride = w.layout === "in_out" ? w.outDim : 1;
    this.oStride = w.layout === "in_out" ? 1 : w.inDim;
  }

  storageIndex(c: number, o: number): number {
    return c * this.cStride + o * this.oStride;
  }

  /** M[c,o] exactly: |W| as float32, times sqrt(s[c]), in float64. */
  at(c: number, o: number): number {
    const i = this.storageIndex(c, o);
    const absW = this.view.f32 ? Math.abs(this.view.f32[i]!) : this.view.absTable![this.view.u16![i]! & 0x7fff]!;
    return absW * this.sq[c]!;
  }

  /**
   * out[j*inDim + c] = M[c, o0+j] for j < width, rounded to out's precision (Float32Array
   * rounding is monotone, so it still orders M). Rows are read contiguously. NaN -> NumericError.
   */
  fill(o0: number, width: number, out: Float32Array | Float64Array): void {
    const { inDim, cStride, oStride, sq } = this;
    const { f32, u16, absTable } = this.view;
    // Two loops so each reads one typed-array kind (monomorphic for the JIT).
    if (f32) {
      for (let c = 0; c < inDim; c++) {
        const s = sq[c]!;
        const base = c * cStride + o0 * oStride;
        for (let j = 0; j < width; j++) {
          const m = Math.abs(f32[base + j * oStride]!) * s;
          if (m !== m) throw this.nanError(c, o0 + j);
          out[j * inDim + c] = m;
        }
      }
    } else {
      for (let c = 0; c < inDim; c++) {
        const s = sq[c]!;
        const base = c * cStride + o0 * oStride;
        for (let j = 0; j < width; j++) {
          const m = absTable![u16![base + j * oStride]! & 0x7fff]! * s;
          if (m !== m) throw this.nanError(c, o0 + j);
          out[j * inDim + c] = m;
        }
      }
    }
  }

  private nanError(c: number, o: number): NumericError {
    return new NumericError(this.w.name, `pruning metric is NaN at input ${c}, output ${o} (NaN weight, or NaN / negative / infinite scale)`);
  }
}

/** Per-column decisions of a tile, column-major like the metric tile: cuts[j*inDim + c]. */
function scatterTile(reader: MetricReader, cuts: Uint8Array, inDim: number, o0: number, width: number, mask: Uint8Array): number {
  let pruned = 0;
  for (let c = 0; c < inDim; c++) {
    const base = reader.storageIndex(c, o0);
    const step = reader.storageIndex(c, o0 + 1) - base;
    for (let j = 0; j < width; j++) {
      const cut = cuts[j * inDim + c]!;
      mask[base + j * step] = cut;
      pruned += cut;
    }
  }
  return pruned;
}

/** N:M: in every run of m consecutive inputs of a column, marks the n smallest (ties: lower index first). */
function markNMColumns(w: WeightMatrix, reader: MetricReader, n: number, m: number, mask: Uint8Array): number {
  const inDim = w.inDim;
  const metric = new Float64Array(TILE * inDim);
  const cuts = new Uint8Array(TILE * inDim);
  let pruned = 0;
  for (let o0 = 0; o0 < w.outDim; o0 += TILE) {
    const width = Math.min(TILE, w.outDim - o0);
    reader.fill(o0, width, metric);
    for (let g = 0; g < width * inDim; g += m) {
      for (let i = g; i < g + m; i++) {
        // Entries ahead of i in (M, c) order; i is pruned when fewer than n are ahead.
        const v = metric[i]!;
        let ahead = 0;
        for (let j = g; j < g + m; j++) {
          const u = metric[j]!;
          if (u < v || (u === v && j < i)) ahead++;
        }
        cuts[i] = ahead < n ? 1 : 0;
      }
    }
    pruned += scatterTile(reader, cuts, inDim, o0, width, mask);
  }
  return pruned;
}

/**
 * Unstructured: in every column marks the k smallest M (ties: lower c first).
 *
 * Selection runs on keys: the float32 rounding of M, whose bit pattern (M >= 0) orders like M
 * but may merge distinct M. Two histogram levels over the key bits find the small bucket holding
 * the k-th smallest key; everything in lower buckets is pruned, everything in higher ones kept,
 * and only the bucket itself is ranked by exact M.
 */
function markSmallestColumns(w: WeightMatrix, reader: MetricReader, k: number, mask: Uint8Array): number {
  const inDim = w.inDim;
  const keyTile = new Float32Array(TILE * inDim);
  const keyBits = new Uint32Array(keyTile.buffer);
  const cuts = new Uint8Array(TILE * inDim);
  const ws: Workspace = {
    hist1: new Int32Array(1 << 11), hist2: new Int32Array(1 << 8),
    members: new Int32Array(inDim), exactIdx: new Int32Array(inDim), exactVal: new Float64Array(inDim),
  };
  let pruned = 0;
  for (let o0 = 0; o0 < w.outDim; o0 += TILE) {
    const width = Math.min(TILE, w.outDim - o0);
    if (k === 0) {
      reader.fill(o0, width, keyTile); // still rejects NaN
      continue;
    }
    reader.fill(o0, width, keyTile);
    for (let j = 0; j < width; j++) {
      const o = o0 + j;
      const keys = keyBits.subarray(j * inDim, (j + 1) * inDim);
      markSmallestKeys(keys, k, cuts.subarray(j * inDim, (j + 1) * inDim), (c) => reader.at(c, o), ws);
    }
    pruned += scatterTile(reader, cuts, inDim, o0, width, mask);
  }
  return pruned;
}

/** Scratch reused by every column of one computeMask call. */
interface Workspace {
  hist1: Int32Array;
  hist2: Int32Array;
  members: Int32Array;
  exactIdx: Int32Array;
  exactVal: Float64Array;
}

// Key digits: level 1 = exponent and 3 mantissa bits (keys of non-NaN M are < 2^31), level 2 = next 8 bits.
const SHIFT1 = 20;
const SHIFT2 = 12;

function markSmallestKeys(keys: Uint32Array, k: number, cut: Uint8Array, exact: (c: number) => number, ws: Workspace): void {
  const n = keys.length;
  const { hist1, hist2, members, exactIdx, exactVal } = ws;

  hist1.fill(0);
  for (let c = 0; c < n; c++) hist1[keys[c]! >>> SHIFT1]++;
  let r = k - 1; // rank still to find, in (M, c) order
  let b1 = 0;
  while (r >= hist1[b1]!) r -= hist1[b1++]!;

  // Lower level-1 buckets are pruned; collect the bucket's members. Digits are < 2^12, so the
  // sign bit of a difference is a branch-free "<" (about half the entries go each way, which a
  // branch would mispredict), and of (d ^ b1) - 1 a branch-free "===".
  let nm = 0;
  for (let c = 0; c < n; c++) {
    const d = keys[c]! >>> SHIFT1;
    cut[c] = (d - b1) >>> 31;
    members[nm] = c;
    nm += ((d ^ b1) - 1) >>> 31;
  }

  hist2.fill(0);
  for (let i = 0; i < nm; i++) hist2[(keys[members[i]!]! >>> SHIFT2) & 0xff]++;
  let b2 = 0;
  while (r >= hist2[b2]!) r -= hist2[b2++]!;

  let ne = 0;
  for (let i = 0; i < nm; i++) {
    const c = members[i]!;
    const d = (keys[c]! >>> SHIFT2) & 0xff;
    cut[c] = d < b2 ? 1 : 0;
    exactIdx[ne] = c;
    exactVal[ne] = exact(c);
    ne += d === b2 ? 1 : 0;
  }

  // The last bucket: prune its r+1 smallest by exact M, ties in increasing c (the collection order).
  const sorted = exactVal.slice(0, ne).sort();
  const thr = sorted[r]!;
  let less = r;
  while (less > 0 && sorted[less - 1] === thr) less--;
  let ties = r + 1 - less;
  for (let i = 0; i < ne; i++) {
    const v = exactVal[i]!;
    if (v < thr) cut[exactIdx[i]!] = 1;
    else if (v === thr && ties > 0) {
      cut[exactIdx[i]!] = 1;
      ties--;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Whole-matrix magnitude (Wanda's magnitude baseline)

/**
 * Marks the k smallest |W| of the whole matrix, ties in row-major [in, out] order. |W| is
 * compared through its float32 bit pattern with the sign cleared, whose integer order is the
 * value order, so a two-digit radix select finds the threshold exactly.
 */
function markMatrixSmallest(w: WeightMatrix, view: ReadView, k: number, mask: Uint8Array): number {
  const { inDim, outDim } = w;
  const keys = absKeys(w, view); // logical [in, out] order
  const total = keys.length;
  if (k === 0) return 0;

  const hist = new Float64Array(65536);
  for (let i = 0; i < total; i++) hist[keys[i]! >>> 16]++;
  let r = k - 1;
  let top = 0;
  while (r >= hist[top]!) r -= hist[top++]!;
  hist.fill(0);
  for (let i = 0; i < total; i++) {
    const key = keys[i]!;
    if (key >>> 16 === top) hist[key & 0xffff]++;
  }
  let low = 0;
  while (r >= hist[low]!) r -= hist[low++]!;
  const thr = ((top << 16) | low) >>> 0;

  let ties = r + 1; // entries equal to thr still to prune, taken in [in, out] order
  for (let c = 0; c < inDim; c++) {
    for (let o = 0; o < outDim; o++) {
      const key = keys[c * outDim + o]!;
      if (key < thr || (key === thr && ties-- > 0)) {
        mask[w.layout === "in_out" ? c * outDim + o : o * inDim + c] = 1;
      }
    }
  }
  return k;
}

/** float32 bits of |W| for every element, in logical [in, out] order; NaN -> NumericError. */
function absKeys(w: WeightMatrix, view: ReadView): Uint32Array {
  const { inDim, outDim } = w;
  const keys = new Uint32Array(inDim * outDim);
  const cStride = w.layout === "in_out" ? outDim : 1;
  const oStride = w.layout === "in_out" ? 1 : inDim;
  const src = view.f32 ? new Uint32Array(view.f32.buffer, view.f32.byteOffset, view.f32.length) : view.u16!;
  const tableBits = view.absTable ? new Uint32Array(view.absTable.buffer) : null;
  for (let c = 0; c < inDim; c++) {
    for (let o = 0; o < outDim; o++) {
      const bits = src[c * cStride + o * oStride]!;
      const key = tableBits ? tableBits[bits & 0x7fff]! : bits & 0x7fffffff;
      if (key > 0x7f800000) throw new NumericError(w.name, `weight at input ${c}, output ${o} is NaN`);
      keys[c * outDim + o] = key;
    }
  }
  return keys;
}
