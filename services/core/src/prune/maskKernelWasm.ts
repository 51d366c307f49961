/**
 * Unstructured mask selection's hot passes as a WebAssembly SIMD kernel, over tiles of 16 output
 * columns of a row-major [in, out] weight (MatMul B), copied into tile-major order first:
 *
 *  - keys: per row c, |W| of 16 columns widened to float32 (float16 by integer arithmetic, which
 *    is exact for normal and subnormal halves and avoids slow subnormal float math; bfloat16 by a
 *    shift), M = |W| * sqrt(s[c]) in float64, rounded to float32 (the key), stored, and counted
 *    in the column's 4096-bin histogram of key >>> 19 (4096 bins measured faster than 2048:
 *    fewer entries share the threshold's bin). Returns the largest key, so a NaN (a key above
 *    +inf's bits) is seen once per tile.
 *  - thresholds: per column, the bin holding the k-th smallest key and its rank within the bin.
 *  - classify: per row, key < lo[j] -> pruned (bit j set), stored as the row's 16 mask bits at
 *    once; lo[j] <= key < hi[j] (the threshold's bin) appends c to column j's member list.
 *    Bits, not bytes: a whole panel's tile masks take an eighth of the memory traffic.
 *  - expand: the tile masks' bits back to one byte per weight, in row-major order.
 *
 * maskSelect.ts ranks the members exactly, as the JavaScript kernel does (key bits, then exact
 * M, then lower c), so both give the same bits. The module is assembled here at load time by
 * wasmAssembler.ts; nothing binary is committed.
 */
import { Code, I32, OP, SIMD, V128, assembleModule, wasm, type WasmMemory } from "./wasmAssembler.js";

export const TILE_COLUMNS = 16;
export const BINS = 4096;
/** A key's bin: its top bits (keys of M >= 0 are below 2^31). */
export const KEY_SHIFT = 19;

export type KernelType = "f32" | "f16" | "bf16";

export interface MaskKernelExports {
  zero(at: number, bytes: number): void;
  /** Histograms go to address 0: 16 columns x BINS int32 counts. */
  keys_f32(src: number, rowBytes: number, inDim: number, sq: number, keys: number): number;
  keys_f16(src: number, rowBytes: number, inDim: number, sq: number, keys: number): number;
  keys_bf16(src: number, rowBytes: number, inDim: number, sq: number, keys: number): number;
  thresholds(k: number, bounds: number, ranks: number): void;
  level2(members: number, n: number, keys: number, r: number, mask: number, bit: number, scratch: number, result: number): void;
  copy32(src: number, srcRow: number, srcTile: number, dst: number, dstRow: number, dstTile: number, rows: number, tiles: number): void;
  copy64(src: number, srcRow: number, srcTile: number, dst: number, dstRow: number, dstTile: number, rows: number, tiles: number): void;
  classify(keys: number, inDim: number, bounds: number, mask: number, members: number, counts: number): void;
  expand(src: number, srcTile: number, dst: number, dstRow: number, rows: number, tiles: number): void;
}

/** Leaves |W| of columns 4q..4q+3 of the row at `src` on the stack, as float32x4. */
function absLanes(f: Code, type: KernelType, src: number, q: number): void {
  if (type === "f32") {
    f.get(src).v128Mem(SIMD.load, 16 * q).v128i32(0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff).simd(SIMD.and);
    return;
  }
  f.get(src).v128Mem(SIMD.load, 16 * (q >> 1)).simd(q % 2 === 0 ? SIMD.i32x4ExtendLowI16x8U : SIMD.i32x4ExtendHighI16x8U);
  if (type === "bf16") {
    f.i32(16).simd(SIMD.i32x4Shl).v128i32(0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff).simd(SIMD.and);
    return;
  }
  // float16, a = bits & 0x7fff, without float arithmetic on subnormals (which would take a slow
  // microcode path): normal: (a << 13) + (112 << 23); subnormal (a < 0x400): a * 2^-24, exact;
  // inf / NaN (a >= 0x7c00): (a << 13) | 0x70000000.
  const a = f.local(V128);
  f.v128i32(0x7fff, 0x7fff, 0x7fff, 0x7fff).simd(SIMD.and).set(a);
  f.get(a).i32(13).simd(SIMD.i32x4Shl).v128i32(0x70000000, 0x70000000, 0x70000000, 0x70000000).simd(SIMD.or);
  const m24 = 0x33800000; // 2^-24 as float32 bits
  f.get(a).simd(SIMD.f32x4ConvertI32x4S).v128i32(m24, m24, m24, m24).simd(SIMD.f32x4Mul);
  f.get(a).i32(13).simd(SIMD.i32x4Shl).v128i32(0x38000000, 0x38000000, 0x38000000, 0x38000000).simd(SIMD.i32x4Add);
  f.get(a).v128i32(0x400, 0x400, 0x400, 0x400).simd(SIMD.i32x4LtU);
  f.simd(SIMD.bitselect);
  f.get(a).v128i32(0x7c00, 0x7c00, 0x7c00, 0x7c00).simd(SIMD.i32x4GeU);
  f.simd(SIMD.bitselect);
}

const LOW_HALF_TWICE = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];
const JOIN_LOW_HALVES = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];

function keysFunction(type: KernelType): Code {
  const f = new Code([I32, I32, I32, I32, I32], [I32]);
  const [src, rowBytes, inDim, sq, keys] = [0, 1, 2, 3, 4];
  const c = f.local(I32);
  const s = f.local(V128);
  const v = f.local(V128);
  const k = f.local(V128);
  const maxKey = f.local(V128);
  const addr = f.local(I32);
  const d = f.local(V128);
  f.open(OP.loop);
  f.get(sq).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(s);
  for (let q = 0; q < 4; q++) {
    absLanes(f, type, src, q);
    f.set(v);
    // key = float32(float64(|W|) * sqrt(s[c])), lanes 0-1 and 2-3 through float64x2.
    f.get(v).simd(SIMD.f64x2PromoteLowF32x4).get(s).simd(SIMD.f64x2Mul).simd(SIMD.f32x4DemoteF64x2Zero);
    f.get(v).get(v).simd(SIMD.shuffle, ...LOW_HALF_TWICE).simd(SIMD.f64x2PromoteLowF32x4).get(s).simd(SIMD.f64x2Mul).simd(SIMD.f32x4DemoteF64x2Zero);
    f.simd(SIMD.shuffle, ...JOIN_LOW_HALVES).set(k);
    f.get(keys).get(k).v128Mem(SIMD.store, 16 * q);
    f.get(maxKey).get(k).simd(SIMD.i32x4MaxU).set(maxKey);
    // Histogram counts sit at address 0 (the caller's layout), so a digit * 4 is an address.
    f.get(k).i32(KEY_SHIFT).simd(SIMD.i32x4ShrU).i32(2).simd(SIMD.i32x4Shl).set(d);
    for (let i = 0; i < 4; i++) {
      const histOffset = (4 * q + i) * BINS * 4;
      f.get(d).lane(SIMD.i32x4ExtractLane, i).tee(addr);
      f.get(addr).mem(OP.i32Load, 2, histOffset).i32(1).op(OP.i32Add).mem(OP.i32Store, 2, histOffset);
    }
  }
  f.get(src).get(rowBytes).op(OP.i32Add).set(src);
  f.get(sq).i32(8).op(OP.i32Add).set(sq);
  f.get(keys).i32(16 * 4).op(OP.i32Add).set(keys);
  f.get(c).i32(1).op(OP.i32Add).tee(c).get(inDim).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end);
  // The largest of the four lanes.
  f.get(maxKey).get(maxKey).get(maxKey).simd(SIMD.shuffle, ...LOW_HALF_TWICE).simd(SIMD.i32x4MaxU).set(maxKey);
  f.get(maxKey).get(maxKey).get(maxKey).simd(SIMD.shuffle, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7).simd(SIMD.i32x4MaxU).lane(SIMD.i32x4ExtractLane, 0);
  return f;
}

function classifyFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32], []);
  const [keys, inDim, bounds, mask, members, counts] = [0, 1, 2, 3, 4, 5];
  const c = f.local(I32);
  const lo = [0, 1, 2, 3].map(() => f.local(V128));
  const hi = [0, 1, 2, 3].map(() => f.local(V128));
  const k = [0, 1, 2, 3].map(() => f.local(V128));
  const cut = [0, 1, 2, 3].map(() => f.local(V128));
  const inBucket = [0, 1, 2, 3].map(() => f.local(V128));
  const bits = f.local(I32);
  const j = f.local(I32);
  const n = f.local(I32);
  for (let q = 0; q < 4; q++) {
    f.get(bounds).v128Mem(SIMD.load, 16 * q).set(lo[q]!);
    f.get(bounds).v128Mem(SIMD.load, 64 + 16 * q).set(hi[q]!);
  }
  f.open(OP.loop);
  for (let q = 0; q < 4; q++) {
    f.get(keys).v128Mem(SIMD.load, 16 * q).set(k[q]!);
    f.get(k[q]!).get(lo[q]!).simd(SIMD.i32x4LtU).set(cut[q]!);
    f.get(k[q]!).get(hi[q]!).simd(SIMD.i32x4LtU).get(cut[q]!).simd(SIMD.andnot).set(inBucket[q]!);
  }
  f.get(mask);
  f.get(cut[0]!).get(cut[1]!).simd(SIMD.i16x8NarrowI32x4S).get(cut[2]!).get(cut[3]!).simd(SIMD.i16x8NarrowI32x4S).simd(SIMD.i8x16NarrowI16x8S);
  f.simd(SIMD.i8x16Bitmask).mem(OP.i32Store16, 1);
  // Members: one bit per column in the bucket; each appends c to its column's list.
  f.get(inBucket[0]!).get(inBucket[1]!).simd(SIMD.i16x8NarrowI32x4S).get(inBucket[2]!).get(inBucket[3]!).simd(SIMD.i16x8NarrowI32x4S).simd(SIMD.i8x16NarrowI16x8S);
  f.simd(SIMD.i8x16Bitmask).set(bits);
  f.open(OP.block).open(OP.loop);
  f.get(bits).op(OP.i32Eqz).br(OP.brIf, 1);
  f.get(bits).op(OP.i32Ctz).i32(2).op(OP.i32Shl).set(j); // j * 4
  f.get(counts).get(j).op(OP.i32Add).mem(OP.i32Load, 2).set(n);
  f.get(members).get(j).get(inDim).op(OP.i32Mul).op(OP.i32Add).get(n).i32(2).op(OP.i32Shl).op(OP.i32Add).get(c).mem(OP.i32Store, 2);
  f.get(counts).get(j).op(OP.i32Add).get(n).i32(1).op(OP.i32Add).mem(OP.i32Store, 2);
  f.get(bits).get(bits).i32(1).op(OP.i32Sub).op(OP.i32And).set(bits);
  f.br(OP.br, 0);
  f.op(OP.end).op(OP.end);
  f.get(keys).i32(16 * 4).op(OP.i32Add).set(keys);
  f.get(mask).i32(2).op(OP.i32Add).set(mask);
  f.get(c).i32(1).op(OP.i32Add).tee(c).get(inDim).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end);
  return f;
}

/** Walks int32 counts from address `at` until rank r falls in one; leaves its address in at, r within it. */
function emitRankScan(f: Code, at: number, r: number, count: number): void {
  f.open(OP.block).open(OP.loop);
  f.get(at).mem(OP.i32Load, 2).set(count);
  f.get(r).get(count).op(OP.i32LtU).br(OP.brIf, 1);
  f.get(r).get(count).op(OP.i32Sub).set(r);
  f.get(at).i32(4).op(OP.i32Add).set(at);
  f.br(OP.br, 0);
  f.op(OP.end).op(OP.end);
}

/**
 * Per column j of the tile, from its histogram (at address 0): the bucket b holding the k-th
 * smallest key and the rank r of that key within it. Writes lo[j] = b << 20, hi[j] = (b + 1) << 20
 * (bounds, then bounds + 64) and r (ranks). Needs 1 <= k <= the column's length.
 */
function thresholdsFunction(): Code {
  const f = new Code([I32, I32, I32], []);
  const [k, bounds, ranks] = [0, 1, 2];
  const j = f.local(I32);
  const r = f.local(I32);
  const at = f.local(I32);
  const v = f.local(V128);
  const sum = f.local(I32);
  f.open(OP.loop);
  f.get(k).i32(1).op(OP.i32Sub).set(r);
  f.get(j).i32(BINS * 4).op(OP.i32Mul).set(at);
  // Eight bins at a time while the rank lies beyond them, then one at a time.
  f.open(OP.block).open(OP.loop);
  f.get(at).v128Mem(SIMD.load, 0).get(at).v128Mem(SIMD.load, 16).simd(SIMD.i32x4Add).set(v);
  f.get(v).get(v).get(v).simd(SIMD.shuffle, ...LOW_HALF_TWICE).simd(SIMD.i32x4Add).set(v);
  f.get(v).get(v).get(v).simd(SIMD.shuffle, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7).simd(SIMD.i32x4Add).lane(SIMD.i32x4ExtractLane, 0).set(sum);
  f.get(r).get(sum).op(OP.i32LtU).br(OP.brIf, 1);
  f.get(r).get(sum).op(OP.i32Sub).set(r);
  f.get(at).i32(32).op(OP.i32Add).set(at);
  f.br(OP.br, 0);
  f.op(OP.end).op(OP.end);
  emitRankScan(f, at, r, sum);
  // at - j * BINS * 4 = b * 4, so b << KEY_SHIFT = (at - j * BINS * 4) << (KEY_SHIFT - 2).
  f.get(at).get(j).i32(BINS * 4).op(OP.i32Mul).op(OP.i32Sub).set(at);
  f.get(bounds).get(j).i32(2).op(OP.i32Shl).op(OP.i32Add).get(at).i32(KEY_SHIFT - 2).op(OP.i32Shl).mem(OP.i32Store, 2);
  f.get(bounds).get(j).i32(2).op(OP.i32Shl).op(OP.i32Add).get(at).i32(4).op(OP.i32Add).i32(KEY_SHIFT - 2).op(OP.i32Shl).mem(OP.i32Store, 2, 64);
  f.get(ranks).get(j).i32(2).op(OP.i32Shl).op(OP.i32Add).get(r).mem(OP.i32Store, 2);
  f.get(j).i32(1).op(OP.i32Add).tee(j).i32(TILE_COLUMNS).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end);
  return f;
}

/**
 * One column's threshold bin, ranked by the next 8 key bits: members (n entries of c) whose digit
 * is below that of the r-th smallest are marked pruned (`bit` set in the 16-bit row mask at
 * mask + c * 2); those sharing its digit
 * are listed at scratch + 1024 (after a 256-bin histogram at scratch) for exact ranking, with
 * the remaining rank and their count written to result[0], result[1]. Keys at keys + c * 64.
 */
function level2Function(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32, I32, I32], []);
  const [members, n, keys, r, mask, bit, scratch, result] = [0, 1, 2, 3, 4, 5, 6, 7];
  const at = f.local(I32);
  const i = f.local(I32);
  const c = f.local(I32);
  const d = f.local(I32);
  const b = f.local(I32);
  const h = f.local(I32);
  const n2 = f.local(I32);
  const digit = () => {
    f.get(keys).get(c).i32(6).op(OP.i32Shl).op(OP.i32Add).mem(OP.i32Load, 2).i32(KEY_SHIFT - 8).op(OP.i32ShrU).i32(255).op(OP.i32And);
  };
  const forEachMember = (body: () => void) => {
    f.i32(0).set(i);
    f.open(OP.block).open(OP.loop);
    f.get(i).get(n).op(OP.i32GeU).br(OP.brIf, 1);
    f.get(members).get(i).i32(2).op(OP.i32Shl).op(OP.i32Add).mem(OP.i32Load, 2).set(c);
    body();
    f.get(i).i32(1).op(OP.i32Add).set(i);
    f.br(OP.br, 0);
    f.op(OP.end).op(OP.end);
  };
  for (let q = 0; q < 64; q++) f.get(scratch).v128i32(0, 0, 0, 0).v128Mem(SIMD.store, 16 * q);
  forEachMember(() => {
    digit();
    f.i32(2).op(OP.i32Shl).get(scratch).op(OP.i32Add).tee(d);
    f.get(d).mem(OP.i32Load, 2).i32(1).op(OP.i32Add).mem(OP.i32Store, 2);
  });
  // The digit b holding rank r, and r's rank within it.
  f.get(scratch).set(b);
  emitRankScan(f, b, r, h);
  f.get(b).get(scratch).op(OP.i32Sub).i32(2).op(OP.i32ShrU).set(b);
  forEachMember(() => {
    digit();
    f.tee(d).get(b).op(OP.i32LtU);
    f.open(OP.if);
    f.get(mask).get(c).i32(1).op(OP.i32Shl).op(OP.i32Add).tee(at);
    f.get(at).mem(OP.i32Load16U, 1).get(bit).op(OP.i32Or).mem(OP.i32Store16, 1);
    f.op(OP.end);
    f.get(d).get(b).op(OP.i32Eq);
    f.open(OP.if);
    f.get(scratch).get(n2).i32(2).op(OP.i32Shl).op(OP.i32Add).get(c).mem(OP.i32Store, 2, 1024);
    f.get(n2).i32(1).op(OP.i32Add).set(n2);
    f.op(OP.end);
  });
  f.get(result).get(r).mem(OP.i32Store, 2);
  f.get(result).get(n2).mem(OP.i32Store, 2, 4);
  return f;
}

/**
 * Copies `rows` x `tiles` blocks of 16 * vectors bytes between two layouts, rows outer, tiles
 * inner: block (c, t) is at src + c * srcRow + t * srcTile and goes to dst + c * dstRow +
 * t * dstTile. It turns the row-major weight panel into tile-major order [tile][in][16 columns],
 * so the key pass reads each tile's rows contiguously (a row stride of a whole [in, out] matrix
 * touches a new page per row).
 */
function copyBlocksFunction(vectors: number): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32, I32, I32], []);
  const [src, srcRow, srcTile, dst, dstRow, dstTile, rows, tiles] = [0, 1, 2, 3, 4, 5, 6, 7];
  const loops = { src, dst, outer: { count: rows, src: srcRow, dst: dstRow }, inner: { count: tiles, src: srcTile, dst: dstTile } };
  emitPointerLoops(f, loops, (s, d) => {
    for (let v = 0; v < vectors; v++) f.get(d).get(s).v128Mem(SIMD.load, 16 * v).v128Mem(SIMD.store, 16 * v);
  });
  return f;
}

/** A pointer's step: a parameter (local index) or a constant number of bytes. */
type Step = number | { bytes: number };

interface PointerLoops {
  /** the parameters holding the two pointers */
  src: number;
  dst: number;
  /** the parameter holding each loop's count, and how far each pointer moves per iteration */
  outer: { count: number; src: Step; dst: Step };
  inner: { count: number; src: Step; dst: Step };
}

/**
 * Two nested loops walking a source and a destination pointer: the inner loop starts at the
 * outer one's pointers, `body` gets the locals holding the inner ones. Counts must be >= 1.
 */
function emitPointerLoops(f: Code, loops: PointerLoops, body: (s: number, d: number) => void): void {
  const [i, j, s, d] = [f.local(I32), f.local(I32), f.local(I32), f.local(I32)];
  const advance = (ptr: number, step: Step) => {
    f.get(ptr);
    if (typeof step === "number") f.get(step);
    else f.i32(step.bytes);
    f.op(OP.i32Add).set(ptr);
  };
  f.open(OP.loop);
  f.get(loops.src).set(s);
  f.get(loops.dst).set(d);
  f.i32(0).set(j);
  f.open(OP.loop);
  body(s, d);
  advance(s, loops.inner.src);
  advance(d, loops.inner.dst);
  f.get(j).i32(1).op(OP.i32Add).tee(j).get(loops.inner.count).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end);
  advance(loops.src, loops.outer.src);
  advance(loops.dst, loops.outer.dst);
  f.get(i).i32(1).op(OP.i32Add).tee(i).get(loops.outer.count).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end);
}

/** Bit j of a row's 16-bit mask is its column j: lanes 0-7 test the low byte, 8-15 the high. */
const BIT_OF_LANE = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];

/**
 * Turns 16-bit row masks (tile t's row c at src + t * srcTile + c * 2) back into one byte per
 * weight (1 = pruned) at dst + c * dstRow + t * 16, for rows c < rows and tiles t < tiles.
 */
function expandFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32], []);
  const [src, srcTile, dst, dstRow, rows, tiles] = [0, 1, 2, 3, 4, 5];
  const v = f.local(V128);
  const loops = { src, dst, outer: { count: tiles, src: srcTile, dst: { bytes: 16 } }, inner: { count: rows, src: { bytes: 2 }, dst: dstRow } };
  emitPointerLoops(f, loops, (s, d) => {
    // The row's two mask bytes, each spread over eight lanes, each lane keeping its own bit.
    f.get(s).mem(OP.i32Load16U, 1).simd(SIMD.i16x8Splat).set(v);
    f.get(v).get(v).simd(SIMD.shuffle, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    f.v128i8(BIT_OF_LANE).simd(SIMD.and).v128i8(BIT_OF_LANE).simd(SIMD.i8x16Eq);
    f.i32(1).simd(SIMD.i8x16Splat).simd(SIMD.and).set(v);
    f.get(d).get(v).v128Mem(SIMD.store);
  });
  return f;
}

/**
 * Zeroes `bytes` (a multiple of 64) from `at`: the histograms before every tile (a TypedArray
 * fill is slower, on a shared memory twice as slow).
 */
function zeroFunction(): Code {
  const f = new Code([I32, I32], []);
  const [at, bytes] = [0, 1];
  const end = f.local(I32);
  f.get(at).get(bytes).op(OP.i32Add).set(end);
  f.open(OP.loop);
  for (let v = 0; v < 4; v++) f.get(at).v128i32(0, 0, 0, 0).v128Mem(SIMD.store, 16 * v);
  f.get(at).i32(64).op(OP.i32Add).tee(at).get(end).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end);
  return f;
}

/** The largest memory (64 KiB pages) of a mask thread's shared kernel memory: 4 GiB, wasm32's limit. */
export const SHARED_MAX_PAGES = 65536;

/** The kernel's module; `shared`: importing a shared memory (sharedKernelMemory). */
export function maskKernelModule(shared = false): Uint8Array {
  return assembleModule([
    { name: "zero", code: zeroFunction() },
    { name: "keys_f32", code: keysFunction("f32") },
    { name: "keys_f16", code: keysFunction("f16") },
    { name: "keys_bf16", code: keysFunction("bf16") },
    { name: "classify", code: classifyFunction() },
    { name: "thresholds", code: thresholdsFunction() },
    { name: "level2", code: level2Function() },
    { name: "expand", code: expandFunction() },
    { name: "copy32", code: copyBlocksFunction(2) },
    { name: "copy64", code: copyBlocksFunction(4) },
  ], shared ? SHARED_MAX_PAGES : undefined);
}

export type { WasmMemory } from "./wasmAssembler.js";

/**
 * Where a mask thread's kernel memory holds the weights another thread copies in (maskPool.ts):
 * above every panel's working memory (kernelLimits.memoryBudget, 128 MiB, is the most a panel
 * takes; maskSelect.ts keeps panels below this when the weights are in the memory).
 */
export const KERNEL_INPUT_AT = 128 * 2 ** 20;

/**
 * A shared memory for a mask thread's kernel, `bytes` long at first: the pool's thread writes
 * weights into it (from KERNEL_INPUT_AT) while the mask thread's kernel works in it.
 */
export function sharedKernelMemory(bytes: number): WasmMemory {
  return new wasm.Memory({ initial: Math.ceil(bytes / 65536), maximum: SHARED_MAX_PAGES, shared: true });
}

/** One instance per thread, with memory that grows to the largest panel seen. */
export class MaskKernel {
  private constructor(readonly memory: WasmMemory, readonly fn: MaskKernelExports) {}

  /** A kernel in its own memory, or in `shared` (a sharedKernelMemory). */
  static create(shared?: WasmMemory): MaskKernel {
    const memory = shared ?? new wasm.Memory({ initial: 1 });
    const instance = new wasm.Instance(new wasm.Module(maskKernelModule(shared !== undefined)), { env: { memory } });
    return new MaskKernel(memory, instance.exports as unknown as MaskKernelExports);
  }

  /** Makes the memory at least `bytes` long; its buffer changes when it grows. */
  reserve(bytes: number): ArrayBuffer | SharedArrayBuffer {
    const have = this.memory.buffer.byteLength;
    if (bytes > have) this.memory.grow(Math.ceil((bytes - have) / 65536));
    return this.memory.buffer;
  }

  /** The address of `bytes` in this kernel's memory, or null when they lie elsewhere. */
  addressOf(bytes: Uint8Array): number | null {
    return bytes.buffer === this.memory.buffer ? bytes.byteOffset : null;
  }
}

let kernel: MaskKernel | null | undefined;
let kernelMemory: WasmMemory | undefined;

/** Makes this thread's kernel (not made yet) work in `memory`, a sharedKernelMemory. */
export function useKernelMemory(memory: WasmMemory): void {
  if (kernel !== undefined) throw new Error("the mask kernel of this thread already exists");
  kernelMemory = memory;
}

/** This thread's kernel, or null where WebAssembly SIMD is unavailable (the JavaScript kernel runs). */
export function maskKernel(): MaskKernel | null {
  if (kernel === undefined) {
    try {
      kernel = MaskKernel.create(kernelMemory);
    } catch {
      kernel = null;
    }
  }
  return kernel;
}
