/**
 * tr(BᵀHB) (SparseGPT's output energy and error, sparseGpt.ts `quadratic`) and a sample's
 * Hessian A_jᵀA_j (hessian.ts) from dot products of rows, Σ_o B[i,o]·B[j,o], taken by a
 * WebAssembly SIMD kernel: each float64x2 lane is
 * one (i, j) pair's sum, started at 0 and taking its terms in o order, one multiplication then one
 * addition (WebAssembly never fuses them), so every dot product has the bits of the scalar loop,
 * and the total is then added up in JavaScript in the scalar loop's (i, j) order. The kernel
 * reads Bᵀ (o-major, the channels padded to a multiple of 8 with zeros): two rows i, i+1 at a
 * time against eight channels j at a time, sixteen sums in eight registers, for a block of 32
 * rows i per call, so that a block of j channels is read from cache by all of them.
 *
 * Measured on the second machine, the scalar loop ran ~2 G multiply-adds a second whatever the
 * width (so it was not waiting on memory); this kernel does two per instruction and has no bounds
 * checks. Memory: Bᵀ plus the block's dot products, in a WebAssembly memory that each thread
 * keeps for its next calls up to GRAM_KEEP_BYTES (a fresh memory's first touch cost more than
 * the work: ~80 ms for the 23 MB of a 1024 x 2816 linear's quadratic form, against ~6 ms to fill
 * one already mapped; SparseGPT calls this per sample and activation and twice per linear);
 * a call that needs more gets a memory of its own, dropped after it. Where a call would pass
 * MAX_KERNEL_BYTES, or WebAssembly SIMD is missing, the caller's scalar loop runs instead, with
 * the same bits.
 */
import { Code, I32, OP, SIMD, V128, assembleModule, compiledOnce, wasm, type WasmMemory } from "./wasmAssembler.js";

/** Rows i per kernel call. */
const ROWS = 32;
/** Channels j per step (one 64-byte line of float64). */
const LANES = 8;
/** The most memory one call may take (beyond it the scalar loop runs, with the same bits). */
export const MAX_KERNEL_BYTES = 2 ** 31;
/**
 * The most memory a thread keeps between calls (a SparseGPT solve of a 4096-input linear with
 * 4096 outputs needs ~134 MB): a long-lived process holds at most this much once it is done.
 */
export const GRAM_KEEP_BYTES = 256 * 2 ** 20;

const F64X2_ADD = 240;

/**
 * pair_dots(I, rows, inP, out, dOff, jStart): for p < rows (even), i = I + p, and j = jStart..
 * inP-1 in steps of 8: D[p][j] = Σ_o BT[o][i]·BT[o][j] and D[p+1][j] = Σ_o BT[o][i+1]·BT[o][j],
 * BT at address 0 (out rows of inP float64), D at dOff (rows of inP float64). jStart is a multiple
 * of 8 at most I; out >= 1.
 */
function pairDotsFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32], []);
  const [I, rows, inP, out, dOff, jStart] = [0, 1, 2, 3, 4, 5];
  const jb = f.local(I32);
  const p = f.local(I32);
  const o = f.local(I32);
  const row = f.local(I32);
  const stride = f.local(I32);
  const colI = f.local(I32);
  const at = f.local(I32);
  const acc = Array.from({ length: 8 }, () => f.local(V128));
  const s = [f.local(V128), f.local(V128)];
  const v = Array.from({ length: 4 }, () => f.local(V128));
  f.get(inP).i32(8).op(OP.i32Mul).set(stride);
  f.get(jStart).set(jb);
  f.open(OP.loop); // jb
  f.i32(0).set(p);
  f.open(OP.loop); // p
  for (const a of acc) f.v128i32(0, 0, 0, 0).set(a);
  f.get(I).get(p).op(OP.i32Add).i32(8).op(OP.i32Mul).set(colI);
  f.i32(0).set(o);
  f.i32(0).set(row);
  f.open(OP.loop); // o
  f.get(row).get(colI).op(OP.i32Add).tee(at).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(s[0]!);
  f.get(at).mem(OP.f64Load, 3, 8).simd(SIMD.f64x2Splat).set(s[1]!);
  f.get(row).get(jb).i32(8).op(OP.i32Mul).op(OP.i32Add).set(at);
  v.forEach((x, q) => f.get(at).v128Mem(SIMD.load, 16 * q).set(x));
  for (let r = 0; r < 2; r++) {
    for (let q = 0; q < 4; q++) {
      const a = acc[4 * r + q]!;
      f.get(a).get(s[r]!).get(v[q]!).simd(SIMD.f64x2Mul).simd(F64X2_ADD).set(a);
    }
  }
  f.get(row).get(stride).op(OP.i32Add).set(row);
  f.get(o).i32(1).op(OP.i32Add).tee(o).get(out).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // o
  // D[p][jb..jb+7] and D[p+1][jb..jb+7].
  f.get(dOff).get(p).get(inP).op(OP.i32Mul).get(jb).op(OP.i32Add).i32(8).op(OP.i32Mul).op(OP.i32Add).set(at);
  acc.slice(0, 4).forEach((a, q) => f.get(at).get(a).v128Mem(SIMD.store, 16 * q));
  f.get(at).get(stride).op(OP.i32Add).set(at);
  acc.slice(4).forEach((a, q) => f.get(at).get(a).v128Mem(SIMD.store, 16 * q));
  f.get(p).i32(2).op(OP.i32Add).tee(p).get(rows).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // p
  f.get(jb).i32(LANES).op(OP.i32Add).tee(jb).get(inP).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // jb
  return f;
}

/** The compiled module, made once per thread on first use (null where WebAssembly SIMD is missing). */
const gramModule = compiledOnce(() => assembleModule([{ name: "pair_dots", code: pairDotsFunction() }]));

/**
 * Channels padded to whole steps of the kernel, plus one: a last odd row i pairs with a zero
 * channel.
 */
export function paddedChannels(n: number): number {
  return Math.ceil((n + 1) / LANES) * LANES;
}

/**
 * Rows [i0, i1) (i0 even) of the Gram matrix G[i][j] = Σ_o Bᵀ[o][i]·Bᵀ[o][j] (each sum from 0, in
 * o order) of `out` rows of Bᵀ over n channels, which `fill` writes into `bt` (out rows of `inP`
 * float64, the padding left zero): emit(i, dots, at) gives row i, G[i][j] = dots[at + j] for
 * j >= i, rows in order. False where the kernel cannot run (no SIMD, nothing to do, or more than
 * MAX_KERNEL_BYTES): the caller computes them the scalar way.
 */
export function gramRows(
  n: number, out: number, i0: number, i1: number,
  fill: (bt: Float64Array, inP: number) => void,
  emit: (i: number, dots: Float64Array, at: number) => void,
): boolean {
  const inP = paddedChannels(n);
  const dOff = out * inP * 8;
  const bytes = gramBytes(n, out);
  const module = n > 0 && out > 0 && i1 > i0 && bytes <= MAX_KERNEL_BYTES ? gramModule() : null;
  if (!module) return false;
  const { memory, pairDots } = gramInstance(module, bytes);
  const bt = new Float64Array(memory.buffer, 0, out * inP);
  fill(bt, inP);
  // A kept memory holds an earlier call's values in the padding channels: the kernel reads them
  // into sums nobody uses, but as zeros, as in a fresh memory (stale subnormals would slow them).
  if (inP > n) for (let o = 0; o < out; o++) bt.fill(0, o * inP + n, (o + 1) * inP);
  const d = new Float64Array(memory.buffer, dOff, ROWS * inP);
  for (let block = i0; block < i1; block += ROWS) {
    const rows = Math.min(ROWS, i1 - block);
    pairDots(block, rows + (rows % 2), inP, out, dOff, block - (block % LANES));
    for (let row = block; row < block + rows; row++) emit(row, d, (row - block) * inP);
  }
  return true;
}

/** The memory one call over n channels and `out` rows of Bᵀ asks for (whole 64 KiB pages). */
export function gramBytes(n: number, out: number): number {
  const inP = paddedChannels(n);
  return Math.ceil(((out + ROWS) * inP * 8) / 65536) * 65536;
}

/**
 * What a thread keeps after its calls of at most `bytes` each (gramBytes): the largest of them,
 * up to GRAM_KEEP_BYTES (a larger call's memory is dropped after it).
 */
export function gramKeptBytes(bytes: number): number {
  return bytes <= GRAM_KEEP_BYTES ? bytes : 0;
}

type PairDots = (I: number, rows: number, inP: number, out: number, dOff: number, jStart: number) => void;

interface GramInstance {
  memory: WasmMemory;
  pairDots: PairDots;
}

/** This thread's kept instance (each thread loads this module anew, so each has its own). */
let kept: GramInstance | undefined;

/** The kept instance where its memory holds `bytes`, else a new one (kept if it is small enough). */
function gramInstance(module: object, bytes: number): GramInstance {
  if (kept && kept.memory.buffer.byteLength >= bytes) return kept;
  const memory = new wasm.Memory({ initial: Math.ceil(bytes / 65536) });
  const instance: GramInstance = { memory, pairDots: (new wasm.Instance(module, { env: { memory } }).exports as { pair_dots: PairDots }).pair_dots };
  if (gramKeptBytes(bytes) > 0) kept = instance;
  return instance;
}

/**
 * tr(BᵀHB) for H [n, n] (row-major) and B [n, out], B given by `fill` as for gramRows: the bits
 * of sparseGpt.ts `quadratic` (its terms added in the same (i, j) order). Null where the kernel
 * cannot run: the caller computes it the scalar way.
 */
export function gramQuadratic(h: Float64Array, n: number, out: number, fill: (bt: Float64Array, inP: number) => void): number | null {
  let total = 0;
  const ran = gramRows(n, out, 0, n, fill, (row, d, at) => {
    const hi = row * n;
    for (let jj = row; jj < n; jj++) {
      const hij = h[hi + jj]!;
      if (hij !== 0) total += (row === jj ? 1 : 2) * hij * d[at + jj]!;
    }
  });
  return ran ? total : null;
}
