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

/**
 * Output columns handled together, so the [in, out] storage is read along rows. Small enough
 * that a tile's metric and histograms stay in cache (measured on 4096x4096: 8 beats 4 and 16).
 */
const TILE = 8;

/** Reads M[c,o] for any weight type and layout. */
class MetricReader {
  private readonly inDim: number;
  // Element (c, o) sits at c*cStride + o*oStride in storage.
  readonly cStride: number;
  readonly oStride: number;

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
   * tile[j*inDim + c] = M[c, o0+j] for j < width, rounded to the tile's precision (rounding to
   * float32 is monotone, so it still orders M). NaN -> NumericError.
   */
  fill(o0: number, width: number, tile: Float32Array | Float64Array): void {
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
          tile[j * inDim + c] = m;
        }
      }
    } else {
      for (let c = 0; c < inDim; c++) {
        const s = sq[c]!;
        const base = c * cStride + o0 * oStride;
        for (let j = 0; j < width; j++) {
          const m = absTable![u16![base + j * oStride]! & 0x7fff]! * s;
          if (m !== m) throw this.nanError(c, o0 + j);
          tile[j * inDim + c] = m;
        }
      }
    }
  }

  private nanError(c: number, o: number): NumericError {
    return new NumericError(this.w.name, `pruning metric is NaN at input ${c}, output ${o} (NaN weight, or NaN / negative / infinite scale)`);
  }
}

/** N:M: in every run of m consecutive inputs of a column, marks the n smallest (ties: lower c first). */
function markNMColumns(w: WeightMatrix, reader: MetricReader, n: number, m: number, mask: Uint8Array): number {
  const inDim = w.inDim;
  const tile = new Float64Array(TILE * inDim);
  let pruned = 0;
  for (let o0 = 0; o0 < w.outDim; o0 += TILE) {
    const width = Math.min(TILE, w.outDim - o0);
    reader.fill(o0, width, tile);
    for (let j = 0; j < width; j++) {
      for (let g = 0; g < inDim; g += m) {
        for (let c = g; c < g + m; c++) {
          // Entries ahead of c in (M, c) order; c is pruned when fewer than n are ahead.
          const v = tile[j * inDim + c]!;
          let ahead = 0;
          for (let h = g; h < g + m; h++) {
            const u = tile[j * inDim + h]!;
            if (u < v || (u === v && h < c)) ahead++;
          }
          const cut = ahead < n ? 1 : 0;
          mask[reader.storageIndex(c, o0 + j)] = cut;
          pruned += cut;
        }
      }
    }
  }
  return pruned;
}

// Selection digits of a key (float32 bits of M >= 0, so < 2^31): level 1 = exponent and the top
// 3 mantissa bits, level 2 = the next 8 mantissa bits.
const SHIFT1 = 20;
const BINS1 = 1 << 11;
const SHIFT2 = 12;
const BINS2 = 1 << 8;

/**
 * Unstructured: in every column marks the k smallest M (ties: lower c first).
 *
 * Selection runs on keys: the float32 rounding of M, whose bit pattern orders like M but may
 * merge distinct M. A histogram of each column's level-1 digits finds the bucket holding the k-th
 * smallest key: lower buckets are pruned, higher ones kept, and only the bucket's members (a few
 * percent of the column) are ranked further, by level-2 digit and finally by exact M.
 */
function markSmallestColumns(w: WeightMatrix, reader: MetricReader, k: number, mask: Uint8Array): number {
  const inDim = w.inDim;
  const keyTile = new Float32Array(TILE * inDim);
  const keyBits = new Uint32Array(keyTile.buffer);
  // Decisions go to the mask directly where a column is contiguous in storage ("out_in"), else
  // to a column-major tile that is then copied row by row: strided byte writes are slow.
  const cutTile = w.layout === "in_out" ? new Uint8Array(TILE * inDim) : null;
  const hist = new Int32Array(BINS1);
  const members = new Int32Array(inDim);
  const ws: BucketScratch = { hist: new Int32Array(BINS2), exactIdx: new Int32Array(inDim), exactVal: new Float64Array(inDim) };
  let pruned = 0;

  for (let o0 = 0; o0 < w.outDim; o0 += TILE) {
    const width = Math.min(TILE, w.outDim - o0);
    reader.fill(o0, width, keyTile); // also when k = 0: NaN must still be reported
    if (k === 0) continue;
    for (let j = 0; j < width; j++) {
      const keys = keyBits.subarray(j * inDim, (j + 1) * inDim);
      // Where column j's decision for input c goes: cuts[at + c * step].
      const cuts = cutTile ?? mask;
      const at = cutTile ? j : (o0 + j) * inDim;
      const step = cutTile ? width : 1;

      hist.fill(0);
      for (let c = 0; c < inDim; c++) hist[keys[c]! >>> SHIFT1]++;
      let r = k - 1; // rank of the k-th smallest within its bucket
      let b = 0;
      while (r >= hist[b]!) r -= hist[b++]!;

      // Prune the lower buckets and collect the bucket's members. Digits are < 2^12, so the sign
      // bit of d - b is a branch-free d < b (half the entries go each way, which a branch would
      // mispredict) and that of (d ^ b) - 1 a branch-free d === b.
      let n = 0;
      for (let c = 0; c < inDim; c++) {
        const d = keys[c]! >>> SHIFT1;
        const cut = (d - b) >>> 31;
        cuts[at + c * step] = cut;
        pruned += cut;
        members[n] = c;
        n += ((d ^ b) - 1) >>> 31;
      }
      pruned += markInBucket(members.subarray(0, n), r, keys, (c) => reader.at(c, o0 + j), (c) => (cuts[at + c * step] = 1), ws);
    }
    if (cutTile) {
      for (let c = 0; c < inDim; c++) {
        const base = c * w.outDim + o0;
        for (let j = 0; j < width; j++) mask[base + j] = cutTile[c * width + j]!;
      }
    }
  }
  return pruned;
}

/** Scratch reused by every column of one computeMask call. */
interface BucketScratch {
  hist: Int32Array;
  exactIdx: Int32Array;
  exactVal: Float64Array;
}

/**
 * Marks in cuts the r+1 smallest, in (M, c) order, of one column's level-1 bucket (members:
 * their c, increasing). Returns how many it marked.
 */
function markInBucket(
  members: Int32Array, r: number, keys: Uint32Array, exact: (c: number) => number, cut: (c: number) => void, ws: BucketScratch,
): number {
  const { hist, exactIdx, exactVal } = ws;
  hist.fill(0);
  for (let i = 0; i < members.length; i++) hist[(keys[members[i]!]! >>> SHIFT2) & (BINS2 - 1)]++;
  let b = 0;
  while (r >= hist[b]!) r -= hist[b++]!;

  let marked = 0;
  let n = 0; // members of the level-2 bucket, ranked by exact M below
  for (let i = 0; i < members.length; i++) {
    const c = members[i]!;
    const d = (keys[c]! >>> SHIFT2) & (BINS2 - 1);
    if (d < b) {
      cut(c);
      marked++;
    } else if (d === b) {
      exactIdx[n] = c;
      exactVal[n] = exact(c);
      n++;
    }
  }

  // Prune the r+1 smallest exact M; entries equal to the threshold go in increasing c.
  const sorted = exactVal.slice(0, n).sort();
  const thr = sorted[r]!;
  let less = r;
  while (less > 0 && sorted[less - 1] === thr) less--;
  let ties = r + 1 - less;
  for (let i = 0; i < n; i++) {
    const v = exactVal[i]!;
    if (v < thr || (v === thr && ties-- > 0)) {
      cut(exactIdx[i]!);
      marked++;
    }
  }
  return marked;
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
