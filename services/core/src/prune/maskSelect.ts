/**
 * Which weights of one linear layer get pruned: the mask every mode of atv-prune must agree on
 * bit for bit (ATV-Pruning and Wanda metric |W|*sqrt(s), or plain magnitude).
 *
 * The contract, per output channel o (a column of the logical [in, out] matrix):
 *   M[c,o] = |W[c,o]| * sqrt(s[c]) in float64 (W read to float32 first); magnitude: M = |W[c,o]|.
 *   unstructured: prune exactly floor(in * sparsity) smallest M, ties -> lower c first.
 *   N:M: in every run of M consecutive c, prune the N smallest M, ties -> lower c first (the
 *   pattern fixes the ratio at N/M; sparsity is validated but otherwise unused, as in Wanda).
 *   magnitude "matrix" scope: prune floor(in*out*sparsity) smallest |W| of the whole matrix,
 *   ties -> lower (c, o) in row-major [in, out] order.
 * The mask is computed separately from applying it, so callers can compute every mask of a block
 * from unmodified weights before zeroing any.
 *
 * Speed (numpy's stable argsort per column manages ~8e6 params/s; this aims at 1e8+ on one
 * thread): columns are handled in small tiles so the row-major [in, out] storage is read along
 * rows, and each column's k-th smallest is found by histograms of key bits (a monotone float32
 * image of M) instead of a sort; only the handful of entries sharing the threshold's key bucket
 * are ranked by exact M, so the result is exactly the contract's. Unstructured masks of [in, out]
 * weights run the same selection as a WebAssembly SIMD kernel (maskKernelWasm.ts, 2.5e8-4.5e8
 * params/s on float16 on two machines) over whole 16-column tiles; other columns, layouts and
 * patterns, and hosts without WebAssembly, use the JavaScript kernel below. Columns are independent, so
 * computeMaskColumns lets threads (maskPool.ts) share a linear.
 */
import { InvalidArgumentError, NumericError, UnsupportedTypeError } from "../errors.js";
import { OnnxDataType as DT, halfToFloatTable, typeName } from "../onnx/dtype.js";
import { runCopier } from "./byteCopy.js";
import { BINS as KERNEL_BINS, KERNEL_INPUT_AT, TILE_COLUMNS, maskKernel, type MaskKernel } from "./maskKernelWasm.js";

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

/** The mask of `w`; written into `into` (cleared first) when given, else into a new buffer. */
export function computeMask(w: WeightMatrix, scale: Float64Array | null, opts: MaskOptions, into?: Uint8Array): MaskResult {
  const total = w.inDim * w.outDim;
  const scope = checkMaskJob(w, scale, opts);
  if (into && into.length !== total) throw new InvalidArgumentError(w.name, `a mask buffer of ${into.length} bytes does not fit a ${w.inDim}x${w.outDim} weight`);
  if (scope === "matrix") {
    // A recycled buffer (an earlier block's mask) is cleared: this selection only sets bytes.
    const mask = into ? into.fill(0) : new Uint8Array(total);
    const pruned = markMatrixSmallest(w, readView(w), Math.floor(total * opts.sparsity), mask);
    return { mask, pruned, total };
  }
  // computeMaskColumns writes every byte of its columns, so a recycled buffer needs no clearing.
  const mask = into ?? new Uint8Array(total);
  return { mask, pruned: computeMaskColumns(w, scale, opts, 0, w.outDim, mask), total };
}

/**
 * Validates a mask job as computeMask does, throwing the same typed errors (a NaN metric is only
 * found while computing). Returns the scope, which decides whether columns can be split.
 */
export function checkMaskJob(w: WeightMatrix, scale: Float64Array | null, opts: MaskOptions): "column" | "matrix" {
  const sparsity = opts.sparsity;
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new InvalidArgumentError("sparsity", `must be in [0, 1), got ${String(sparsity)}`);
  }
  const pattern = checkPattern(opts.pattern);
  checkWeight(w);
  if ((opts.scope ?? "column") === "matrix") {
    if (scale !== null || pattern.kind !== "unstructured") {
      throw new InvalidArgumentError("scope", `"matrix" scope is the magnitude baseline: it needs no scale and the unstructured pattern (layer ${w.name})`);
    }
    return "matrix";
  }
  if (opts.scope !== undefined && opts.scope !== "column") {
    throw new InvalidArgumentError("scope", `must be "column" or "matrix", got ${String(opts.scope)}`);
  }
  if (pattern.kind === "nm" && w.inDim % pattern.m !== 0) {
    throw new InvalidArgumentError(w.name, `input dimension ${w.inDim} is not a multiple of M=${pattern.m} for the ${pattern.n}:${pattern.m} pattern`);
  }
  if (scale !== null && scale.length !== w.inDim) {
    throw new InvalidArgumentError(w.name, `scale has ${scale.length} entries, the layer has ${w.inDim} input channels`);
  }
  return "column";
}

/**
 * The column-scope mask of output columns [begin, end) only, written into `mask` (the whole
 * matrix's, in storage order): every byte of those columns is written, so `mask` may hold an
 * earlier linear's bits; other columns' bytes are left alone. Returns how many it pruned.
 * Columns are independent, so threads given disjoint ranges produce computeMask's bits.
 *
 * `awaitRows(r)`, where given, is called before the columns' bytes of input rows below r are
 * read, and returns once they are in place: a mask thread starts while its weights are still
 * being copied to it (maskPool.ts). The WebAssembly kernel reads row by row; other paths ask
 * for every row first.
 */
export function computeMaskColumns(
  w: WeightMatrix, scale: Float64Array | null, opts: MaskOptions, begin: number, end: number, mask: Uint8Array,
  awaitRows: (rows: number) => void = () => {},
): number {
  if (checkMaskJob(w, scale, opts) !== "column") throw new InvalidArgumentError("scope", `"matrix" scope cannot be split by columns (layer ${w.name})`);
  if (!(Number.isSafeInteger(begin) && Number.isSafeInteger(end) && 0 <= begin && begin <= end && end <= w.outDim)) {
    throw new InvalidArgumentError(w.name, `column range [${begin}, ${end}) is outside 0..${w.outDim}`);
  }
  if (mask.length !== w.inDim * w.outDim) throw new InvalidArgumentError(w.name, `a mask of ${mask.length} entries does not fit a ${w.inDim}x${w.outDim} weight`);
  const pattern = opts.pattern;
  const sq = sqrtOfScale(w, scale);
  // A misaligned weight is copied whole by readView.
  if (w.bytes.byteOffset % elemSize(w) !== 0) awaitRows(w.inDim);
  const reader = new MetricReader(w, readView(w), sq);
  const k = Math.floor(w.inDim * opts.sparsity);
  // (the selections below write only when they prune something)
  if (pattern.kind === "unstructured" && k === 0) clearColumns(w, begin, end, mask);
  const fast = pattern.kind === "unstructured" && w.layout === "in_out" ? markSmallestTilesWasm(w, sq, reader, k, begin, end, mask, awaitRows) : null;
  awaitRows(w.inDim);
  if (pattern.kind === "nm") return markNMColumns(w, reader, pattern.n, pattern.m, begin, end, mask);
  if (!fast) return markSmallestColumns(w, reader, k, begin, end, mask);
  return fast.done === end - begin ? fast.pruned : fast.pruned + markSmallestColumns(w, reader, k, begin + fast.done, end, mask);
}

/** Sets the mask bytes of output columns [begin, end) to 0. */
function clearColumns(w: WeightMatrix, begin: number, end: number, mask: Uint8Array): void {
  if (w.layout === "out_in") {
    mask.fill(0, begin * w.inDim, end * w.inDim);
    return;
  }
  for (let c = 0; c < w.inDim; c++) mask.fill(0, c * w.outDim + begin, c * w.outDim + end);
}

/** Zeroes (to +0 bits) every stored element whose mask byte is set; other bits are untouched. */
export function applyMask(w: WeightMatrix, mask: Uint8Array): void {
  const total = w.inDim * w.outDim;
  const size = elemSize(w);
  if (mask.length !== total || w.bytes.length !== total * size) {
    throw new InvalidArgumentError(w.name, `a mask of ${mask.length} entries and ${w.bytes.length} bytes do not fit a ${w.inDim}x${w.outDim} ${typeName(w.dataType)} weight`);
  }
  const b = w.bytes;
  // Four mask bytes a step, where the weight's and the mask's words are aligned (always, for the
  // engine's buffers); the elements the words leave, one at a time.
  let done = 0;
  if (LITTLE_ENDIAN && b.byteOffset % 4 === 0 && mask.byteOffset % 4 === 0) {
    const words = total >>> 2;
    const maskWords = new Int32Array(mask.buffer, mask.byteOffset, words);
    if (size === 4) clearByWords32(new Int32Array(b.buffer, b.byteOffset, 4 * words), maskWords);
    else clearByWords16(new Int32Array(b.buffer, b.byteOffset, 2 * words), maskWords);
    done = 4 * words;
  }
  if (b.byteOffset % size === 0) {
    const elems = size === 4 ? new Uint32Array(b.buffer, b.byteOffset, total) : new Uint16Array(b.buffer, b.byteOffset, total);
    // Branch-free (half the time of a branch per entry on a random mask): (m | -m) >> 31 is -1
    // for any non-zero byte m and 0 for 0, so each element is ANDed with all ones or all zeros.
    for (let i = done; i < total; i++) elems[i]! &= ~((mask[i]! | -mask[i]!) >> 31);
    return;
  }
  for (let i = done; i < total; i++) if (mask[i] !== 0) b.fill(0, i * size, (i + 1) * size);
}

/** Whether a 32-bit word holds its lowest-addressed byte in its low bits (the word steps below assume it). */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/**
 * Bit 7 of each byte of m set where that byte is non-zero: the byte's low seven bits plus 0x7f
 * carry into bit 7 when any is set (and never out of the byte), its own bit 7 is ORed in.
 */
function nonZeroBytes(m: number): number {
  return (((m & 0x7f7f7f7f) + 0x7f7f7f7f) | m) & 0x80808080;
}

/**
 * float32: element 4q + j is cleared where byte j of mask word q is non-zero. One typed array
 * type per loop (the weights' words as Int32 for both widths): a loop over two element types
 * runs about a third slower, its element accesses polymorphic.
 */
function clearByWords32(elems: Int32Array, maskWords: Int32Array): void {
  for (let q = 0, i = 0; q < maskWords.length; q++, i += 4) {
    const nz = nonZeroBytes(maskWords[q]!);
    elems[i]! &= ((nz >>> 7) & 1) - 1;
    elems[i + 1]! &= ((nz >>> 15) & 1) - 1;
    elems[i + 2]! &= ((nz >>> 23) & 1) - 1;
    elems[i + 3]! &= (nz >>> 31) - 1;
  }
}

/** float16 / bfloat16: elements 4q, 4q + 1 are word 2q's low and high halves, 4q + 2, 4q + 3 word 2q + 1's. */
function clearByWords16(pairs: Int32Array, maskWords: Int32Array): void {
  for (let q = 0; q < maskWords.length; q++) {
    const nz = nonZeroBytes(maskWords[q]!);
    pairs[2 * q]! &= ~(((nz >>> 7) & 1) * 0xffff | ((nz >>> 15) & 1) * 0xffff0000);
    pairs[2 * q + 1]! &= ~(((nz >>> 23) & 1) * 0xffff | (nz >>> 31) * 0xffff0000);
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

/** Checks the weight's shape and byte length; returns its element size. */
function checkWeight(w: WeightMatrix): number {
  const size = elemSize(w);
  if (!(Number.isSafeInteger(w.inDim) && Number.isSafeInteger(w.outDim) && w.inDim > 0 && w.outDim > 0)) {
    throw new InvalidArgumentError(w.name, `bad weight shape ${w.inDim}x${w.outDim}`);
  }
  if (w.bytes.length !== w.inDim * w.outDim * size) {
    throw new InvalidArgumentError(w.name, `${w.bytes.length} bytes do not hold a ${w.inDim}x${w.outDim} ${typeName(w.dataType)} weight`);
  }
  return size;
}

function readView(w: WeightMatrix): ReadView {
  const size = checkWeight(w);
  const total = w.inDim * w.outDim;
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
  // (its length was checked by checkMaskJob)
  // "+ 0" turns sqrt(-0) = -0 into +0: every M is then >= +0, whose float bits order like values.
  for (let c = 0; c < w.inDim; c++) sq[c] = Math.sqrt(scale[c]!) + 0;
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
 * that a tile's keys stay in cache (measured on 4096x4096: 8 beats 4 and 16).
 */
const TILE = 8;

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
   * keys[j*inDim + c] = M[c, o0+j] rounded to float32, for j < width: rounding is monotone, so
   * the keys order like M (but may merge distinct M). NaN -> NumericError.
   */
  fillKeys(o0: number, width: number, keys: Float32Array): void {
    const { f32, u16, absTable } = this.view;
    const bad = f32
      ? fillKeysFromFloat32(f32, this.sq, this.cStride, this.oStride, o0, width, keys)
      : fillKeysFromBits16(u16!, absTable!, this.sq, this.cStride, this.oStride, o0, width, keys);
    if (bad >= 0) {
      throw new NumericError(this.w.name, `pruning metric is NaN at input ${bad % this.inDim}, output ${o0 + Math.floor(bad / this.inDim)} (NaN weight, or NaN / negative / infinite scale)`);
    }
  }
}

// One fill per stored type, as separate functions so each stays monomorphic for the JIT (a shared
// one was measured 1.4x slower once both types had passed through it). Both return the tile index
// of a NaN metric, or -1.

function fillKeysFromFloat32(
  f32: Float32Array, sq: Float64Array, cStride: number, oStride: number, o0: number, width: number, keys: Float32Array,
): number {
  const inDim = sq.length;
  for (let c = 0; c < inDim; c++) {
    const s = sq[c]!;
    const base = c * cStride + o0 * oStride;
    for (let j = 0; j < width; j++) {
      const m = Math.abs(f32[base + j * oStride]!) * s;
      if (m !== m) return j * inDim + c;
      keys[j * inDim + c] = m;
    }
  }
  return -1;
}

function fillKeysFromBits16(
  u16: Uint16Array, absTable: Float32Array, sq: Float64Array, cStride: number, oStride: number, o0: number, width: number, keys: Float32Array,
): number {
  const inDim = sq.length;
  for (let c = 0; c < inDim; c++) {
    const s = sq[c]!;
    const base = c * cStride + o0 * oStride;
    for (let j = 0; j < width; j++) {
      const m = absTable[u16[base + j * oStride]! & 0x7fff]! * s;
      if (m !== m) return j * inDim + c;
      keys[j * inDim + c] = m;
    }
  }
  return -1;
}

/**
 * N:M: in every run of m consecutive inputs of a column, marks the n smallest (ties: lower c
 * first). Keys decide the order of two entries unless they are equal; then their exact M does.
 */
function markNMColumns(w: WeightMatrix, reader: MetricReader, n: number, m: number, begin: number, end: number, mask: Uint8Array): number {
  const inDim = w.inDim;
  const keys = new Float32Array(TILE * inDim);
  let pruned = 0;
  for (let o0 = begin; o0 < end; o0 += TILE) {
    const width = Math.min(TILE, end - o0);
    reader.fillKeys(o0, width, keys);
    for (let j = 0; j < width; j++) {
      const o = o0 + j;
      const col = j * inDim;
      for (let g = 0; g < inDim; g += m) {
        for (let c = g; c < g + m; c++) {
          // Entries ahead of c in (M, c) order; c is pruned when fewer than n are ahead.
          const v = keys[col + c]!;
          let ahead = 0;
          for (let h = g; h < g + m; h++) {
            const u = keys[col + h]!;
            if (u < v || (u === v && h !== c && precedes(reader.at(h, o), h, reader.at(c, o), c))) ahead++;
          }
          const cut = ahead < n ? 1 : 0;
          mask[reader.storageIndex(c, o)] = cut;
          pruned += cut;
        }
      }
    }
  }
  return pruned;
}

/** (M, c) order: smaller M first, then lower c. */
function precedes(ma: number, a: number, mb: number, b: number): boolean {
  return ma < mb || (ma === mb && a < b);
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
function markSmallestColumns(w: WeightMatrix, reader: MetricReader, k: number, begin: number, end: number, mask: Uint8Array): number {
  const inDim = w.inDim;
  const keyTile = new Float32Array(TILE * inDim);
  const keyBits = new Uint32Array(keyTile.buffer);
  // Decisions go to the mask directly where a column is contiguous in storage ("out_in"), else to
  // a small [in, TILE] tile copied into the mask row by row: strided writes over the whole
  // mask were measured 1.5x slower.
  const cutTile = w.layout === "in_out" ? new Uint8Array(TILE * inDim) : null;
  const hist = new Int32Array(BINS1);
  const members = new Int32Array(inDim);
  const ws: BucketScratch = { hist: new Int32Array(BINS2), exactIdx: new Int32Array(inDim), exactVal: new Float64Array(inDim) };
  let pruned = 0;

  for (let o0 = begin; o0 < end; o0 += TILE) {
    const width = Math.min(TILE, end - o0);
    reader.fillKeys(o0, width, keyTile); // also when k = 0: NaN must still be reported
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

      // Prune the lower buckets and collect the bucket's members. Digits are < 2^11, so the sign
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
      pruned += markInBucket(members.subarray(0, n), r, keys, 1, (c) => reader.at(c, o0 + j), (c) => (cuts[at + c * step] = 1), ws);
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
 * Marks (through cut) the r+1 smallest, in (M, c) order, of one column's level-1 bucket
 * (members: their c, increasing; column c's key at keys[c * keyStride]). Returns how many it marked.
 */
function markInBucket(
  members: Int32Array, r: number, keys: Uint32Array, keyStride: number, exact: (c: number) => number, cut: (c: number) => void, ws: BucketScratch,
): number {
  const { hist, exactIdx, exactVal } = ws;
  hist.fill(0);
  for (let i = 0; i < members.length; i++) hist[(keys[members[i]! * keyStride]! >>> SHIFT2) & (BINS2 - 1)]++;
  let b = 0;
  while (r >= hist[b]!) r -= hist[b++]!;

  let marked = 0;
  let n = 0; // members of the level-2 bucket, ranked by exact M below
  for (let i = 0; i < members.length; i++) {
    const c = members[i]!;
    const d = (keys[c * keyStride]! >>> SHIFT2) & (BINS2 - 1);
    if (d < b) {
      cut(c);
      marked++;
    } else if (d === b) {
      exactIdx[n] = c;
      exactVal[n] = exact(c);
      n++;
    }
  }

  markExact(exactIdx, exactVal, n, r, cut);
  return marked + r + 1;
}

/** Up to this many entries markExact ranks pairwise instead of sorting (most buckets hold 1-3). */
const RANK_PAIRWISE = 8;

/**
 * Marks the r+1 smallest of n entries (their c in idx, increasing, their exact M in vals) in
 * (M, c) order: entries equal to the threshold go in increasing c.
 */
function markExact(idx: Int32Array, vals: Float64Array, n: number, r: number, cut: (c: number) => void): void {
  const exactIdx = idx;
  const exactVal = vals;
  if (n <= RANK_PAIRWISE) {
    // An entry is among the r+1 smallest when at most r come before it in (M, c) order; c
    // increases with i, so an equal M comes before when its i is lower.
    for (let i = 0; i < n; i++) {
      const v = exactVal[i]!;
      let ahead = 0;
      for (let j = 0; j < n; j++) {
        const u = exactVal[j]!;
        if (u < v || (u === v && j < i)) ahead++;
      }
      if (ahead <= r) cut(exactIdx[i]!);
    }
    return;
  }
  const sorted = exactVal.slice(0, n).sort();
  const thr = sorted[r]!;
  let less = r;
  while (less > 0 && sorted[less - 1] === thr) less--;
  let ties = r + 1 - less;
  for (let i = 0; i < n; i++) {
    const v = exactVal[i]!;
    if (v < thr) cut(exactIdx[i]!);
    else if (v === thr && ties > 0) {
      cut(exactIdx[i]!);
      ties--;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The WebAssembly kernel (maskKernelWasm.ts) for [in, out] storage

/**
 * The kernel's memory per thread stays below memoryBudget bytes (it never shrinks): wider
 * linears are done in panels of fewer columns. A 4096x4096 float16 linear fits in one panel.
 * Tests lower it to run several panels.
 */
export const kernelLimits = { memoryBudget: 128 * 2 ** 20 };

const align16 = (n: number) => Math.ceil(n / 16) * 16;

/**
 * Unstructured selection of whole 16-column tiles from `begin` by the WebAssembly kernel, with
 * the same digits and the same exact ranking of the threshold's bucket as markSmallestColumns.
 * Returns how many columns it did and what it pruned, or null where it cannot run (no
 * WebAssembly, not a whole tile, a very tall weight, or a NaN metric, which the JavaScript
 * kernel then reports exactly).
 */
function markSmallestTilesWasm(
  w: WeightMatrix, sq: Float64Array, reader: MetricReader, k: number, begin: number, end: number, mask: Uint8Array, awaitRows: (rows: number) => void,
): { done: number; pruned: number } | null {
  const tiles = Math.floor((end - begin) / TILE_COLUMNS);
  const kernel = tiles > 0 ? maskKernel() : null;
  if (!kernel) return null;
  // Per column: the panel and its mask bits (tile-major) and a staging group of rows; the rest is per row.
  const perColumn = w.inDim * elemSize(w) + w.inDim / 8 + ROW_GROUP * elemSize(w);
  const perRow = TILE_COLUMNS * KERNEL_BINS * 4 + w.inDim * (2 * TILE_COLUMNS * 4 + 4 + 8) + ROW_GROUP * STAGE_PAD + 4096;
  // A mask thread's kernel memory (shared) holds weights the pool copies in above KERNEL_INPUT_AT,
  // also while the thread works on a lent weight: panels stay below.
  const budget = kernel.memory.buffer instanceof SharedArrayBuffer ? Math.min(kernelLimits.memoryBudget, KERNEL_INPUT_AT) : kernelLimits.memoryBudget;
  const panelTiles = Math.min(tiles, Math.floor((budget - perRow) / perColumn / TILE_COLUMNS));
  if (panelTiles < 1) return null;
  let pruned = 0;
  for (let t = 0; t < tiles; t += panelTiles) {
    const panelBegin = begin + t * TILE_COLUMNS;
    const done = markPanelWasm(kernel, w, sq, reader, k, panelBegin, Math.min(panelTiles, tiles - t), mask, awaitRows);
    if (done === null) return null;
    pruned += done;
  }
  return { done: tiles * TILE_COLUMNS, pruned };
}

/**
 * Rows copied to and from tile-major order together: the blocks a group of rows shares a page
 * with are copied together (measured 1.4x faster than row by row), and a group's rows, staged
 * on their way in or out of the kernel's memory, stay in cache.
 */
const ROW_GROUP = 32;
/**
 * Bytes added to each staged row: rows a power of two apart would share cache sets, and the
 * tile copies touch every row of a group for each tile (measured ~10% off one thread's time).
 */
const STAGE_PAD = 64;

/**
 * Copies block (c, t) of rows c < n and tiles t < tiles from src + c * srcRow + t * srcTile to
 * dst + c * dstRow + t * dstTile, tiles outer.
 */
function copyGroupByTiles(
  copy: MaskKernel["fn"]["copy32"], n: number, tiles: number, src: number, srcRow: number, srcTile: number, dst: number, dstRow: number, dstTile: number,
): void {
  copy(src, srcTile, srcRow, dst, dstTile, dstRow, tiles, n);
}

/**
 * One panel of `tiles` tiles from `begin`: copied into the kernel's memory (then tile-major),
 * selected, and its mask copied back. Returns what it pruned, or null for a NaN metric.
 */
function markPanelWasm(
  kernel: MaskKernel, w: WeightMatrix, sq: Float64Array, reader: MetricReader, k: number, begin: number, tiles: number, mask: Uint8Array,
  awaitRows: (rows: number) => void,
): number | null {
  const { inDim, outDim } = w;
  const size = elemSize(w);
  const width = tiles * TILE_COLUMNS;
  const panelRow = width * size;
  // Memory: histograms (at 0), keys [in, 16], member lists [16, in], counts, bounds, ranks,
  // sqrt(s), a group of rows as given (the panel's weights, later its mask), the panel
  // tile-major, its mask tile-major as 16-bit rows.
  const keysAt = TILE_COLUMNS * KERNEL_BINS * 4;
  const listsAt = keysAt + TILE_COLUMNS * inDim * 4;
  const countsAt = listsAt + TILE_COLUMNS * inDim * 4;
  const boundsAt = countsAt + TILE_COLUMNS * 4;
  const ranksAt = boundsAt + 2 * TILE_COLUMNS * 4;
  const resultAt = ranksAt + TILE_COLUMNS * 4;
  const level2At = resultAt + 16; // a 256-bin histogram, then a list of up to inDim entries
  const sqAt = level2At + 256 * 4 + inDim * 4;
  const stageRow = panelRow + STAGE_PAD;
  const stageMaskRow = width + STAGE_PAD;
  const stagingAt = align16(sqAt + inDim * 8);
  const srcAt = align16(stagingAt + ROW_GROUP * stageRow);
  const maskTilesAt = align16(srcAt + inDim * panelRow);
  const maskTileBytes = inDim * 2;
  let buffer: ArrayBuffer | SharedArrayBuffer;
  try {
    buffer = kernel.reserve(maskTilesAt + tiles * maskTileBytes);
  } catch {
    return null; // the memory could not grow: the JavaScript kernel needs none
  }
  const u8 = new Uint8Array(buffer);
  const u16 = new Uint16Array(buffer);
  const i32 = new Int32Array(buffer);
  new Float64Array(buffer, sqAt, inDim).set(sq);
  // Weights already in the kernel's memory (a mask thread's, written by the pool) are read in
  // place, each group of rows once it is there; others are staged a group of rows at a time.
  const at = kernel.addressOf(w.bytes);
  const tileBytes = TILE_COLUMNS * size;
  const tileStride = inDim * tileBytes;
  const copyWeights = size === 4 ? kernel.fn.copy64 : kernel.fn.copy32;
  const stageIn = runCopier(w.bytes, u8);
  for (let c0 = 0; c0 < inDim; c0 += ROW_GROUP) {
    const n = Math.min(ROW_GROUP, inDim - c0);
    awaitRows(c0 + n);
    if (at !== null) {
      copyGroupByTiles(copyWeights, n, tiles, at + (c0 * outDim + begin) * size, outDim * size, tileBytes, srcAt + c0 * tileBytes, tileBytes, tileStride);
      continue;
    }
    for (let c = c0; c < c0 + n; c++) stageIn((c * outDim + begin) * size, stagingAt + (c - c0) * stageRow, panelRow);
    copyGroupByTiles(copyWeights, n, tiles, stagingAt, stageRow, tileBytes, srcAt + c0 * tileBytes, tileBytes, tileStride);
  }
  const keysOf = w.dataType === DT.FLOAT ? kernel.fn.keys_f32 : w.dataType === DT.FLOAT16 ? kernel.fn.keys_f16 : kernel.fn.keys_bf16;
  const hist = i32.subarray(0, TILE_COLUMNS * KERNEL_BINS);
  const exactIdx = new Int32Array(inDim);
  const exactVal = new Float64Array(inDim);
  const level2List = level2At / 4 + 256;
  // cut sets column j's bit (colBit) in the tile's 16-bit row masks (from u16[tileRows]).
  let tileRows = 0;
  let colBit = 0;
  const cut = (c: number) => (u16[tileRows + c]! |= colBit);
  let pruned = 0;
  for (let t = 0; t < tiles; t++) {
    kernel.fn.zero(0, hist.byteLength);
    const maxKey = keysOf(srcAt + t * tileStride, tileBytes, inDim, sqAt, keysAt) >>> 0;
    if (maxKey > 0x7f800000) return null; // a NaN metric
    if (k === 0) continue;
    kernel.fn.thresholds(k, boundsAt, ranksAt);
    i32.fill(0, countsAt / 4, countsAt / 4 + TILE_COLUMNS);
    const maskTile = maskTilesAt + t * maskTileBytes;
    tileRows = maskTile / 2;
    kernel.fn.classify(keysAt, inDim, boundsAt, maskTile, listsAt, countsAt);
    for (let j = 0; j < TILE_COLUMNS; j++) {
      const o = begin + t * TILE_COLUMNS + j;
      colBit = 1 << j;
      // The bin's members by their next 8 key bits in the kernel; the few sharing the
      // threshold's key digits are ranked here by exact M.
      kernel.fn.level2(listsAt + j * inDim * 4, i32[countsAt / 4 + j]!, keysAt + 4 * j, i32[ranksAt / 4 + j]!, maskTile, colBit, level2At, resultAt);
      const r = i32[resultAt / 4]!;
      const n = i32[resultAt / 4 + 1]!;
      if (n === 1) {
        cut(i32[level2List]!); // (then r = 0: the one member is the k-th smallest)
        continue;
      }
      for (let i = 0; i < n; i++) {
        const c = i32[level2List + i]!;
        exactIdx[i] = c;
        exactVal[i] = reader.at(c, o);
      }
      markExact(exactIdx, exactVal, n, r, cut);
    }
    pruned += k * TILE_COLUMNS;
  }
  if (k === 0) return pruned;
  // The mask back in row-major order, a staged group of rows at a time.
  const maskOut = runCopier(u8, mask);
  for (let c0 = 0; c0 < inDim; c0 += ROW_GROUP) {
    const n = Math.min(ROW_GROUP, inDim - c0);
    kernel.fn.expand(maskTilesAt + c0 * 2, maskTileBytes, stagingAt, stageMaskRow, n, tiles);
    for (let c = c0; c < c0 + n; c++) maskOut(stagingAt + (c - c0) * stageMaskRow, c * outDim + begin, width);
  }
  return pruned;
}

// ---------------------------------------------------------------------------------------------
// Whole-matrix magnitude (Wanda's magnitude baseline)

/**
 * Marks the k smallest |W| of the whole matrix, ties in row-major [in, out] order. A stored
 * element with its sign bit cleared is |W| in the same format, whose bits order like the values
 * (float16 and bfloat16 widen to float32 exactly and monotonically, so the order is that of the
 * float32 values); a two-digit radix select over those bits finds the threshold exactly.
 */
function markMatrixSmallest(w: WeightMatrix, view: ReadView, k: number, mask: Uint8Array): number {
  const { inDim, outDim } = w;
  const src = view.f32 ? new Uint32Array(view.f32.buffer, view.f32.byteOffset, view.f32.length) : view.u16!;
  const absBits = view.f32 ? 0x7fffffff : 0x7fff;
  const infBits = view.f32 ? 0x7f800000 : w.dataType === DT.FLOAT16 ? 0x7c00 : 0x7f80; // above: NaN
  const total = src.length;

  const hist = new Float64Array(65536);
  for (let i = 0; i < total; i++) {
    const key = src[i]! & absBits;
    if (key > infBits) throw new NumericError(w.name, `weight at storage index ${i} is NaN`);
    hist[key >>> 16]++;
  }
  if (k === 0) return 0;
  let r = k - 1; // rank of the threshold within its bucket
  let top = 0;
  while (r >= hist[top]!) r -= hist[top++]!;
  hist.fill(0);
  for (let i = 0; i < total; i++) {
    const key = src[i]! & absBits;
    if (key >>> 16 === top) hist[key & 0xffff]++;
  }
  let low = 0;
  while (r >= hist[low]!) r -= hist[low++]!;
  const thr = top * 65536 + low;

  let ties = r + 1; // entries equal to thr still to prune, taken in [in, out] order
  const cStride = w.layout === "in_out" ? outDim : 1;
  const oStride = w.layout === "in_out" ? 1 : inDim;
  for (let c = 0; c < inDim; c++) {
    for (let o = 0; o < outDim; o++) {
      const i = c * cStride + o * oStride;
      const key = src[i]! & absBits;
      if (key < thr) mask[i] = 1;
      else if (key === thr && ties > 0) {
        mask[i] = 1;
        ties--;
      }
    }
  }
  return k;
}
