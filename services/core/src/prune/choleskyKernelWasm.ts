/**
 * The Cholesky factor's bulk (sparseGpt.ts choleskyLowerInPlace: each later row's entries in a
 * step's four columns j..j+3, less its dot products with the four head rows over k < j) by a
 * WebAssembly SIMD kernel. Each float64x2 lane is one entry's chain, started from the entry and
 * taking its terms in k order, one multiplication then one subtraction (WebAssembly never fuses
 * them): the scalar loop's bits. Two rows at a time share the head's loads, which come
 * interleaved (the four head rows' k-th entries side by side, copied per step) so that one load
 * gives two columns.
 *
 * The same kernel adds four rows at a time to one or two others (sparseGpt.ts addFourRows, the
 * bulk of L⁻¹ and of H⁻¹ = L⁻ᵀL⁻¹): each lane one entry, its four terms added in order.
 *
 * The matrices have to live in the kernel's memory: a CholeskyMemory holds the working matrix
 * (n×n float64 at 0), L⁻¹'s (n×n, after it) where both fit, and one scratch row of interleaved
 * head entries per team member. It is shared memory, so that a factorization team's members
 * (solveTeam.ts) each run their own instance over it. WebAssembly addresses are unsigned 32-bit,
 * so a memory may take 4 GiB: both matrices up to ~16380 inputs (Llama-3-8B's 14336-wide MLP
 * input among them), the working matrix alone up to ~23170. Beyond, or where WebAssembly SIMD is
 * missing, there is no memory and the scalar loops run (the same bits).
 */
import { Code, F64, I32, OP, SIMD, V128, assembleModule, compiledOnce, wasm, type ValType, type WasmMemory } from "./wasmAssembler.js";

const F64X2_ADD = 240;
const F64X2_SUB = 241;
/** The most pages a memory may have (4 GiB, what 32-bit addresses reach): the import's limit, and the most this kernel allocates. */
const MAX_PAGES = 65536;
export const CHOLESKY_MAX_BYTES = MAX_PAGES * 65536;

/** Rows chol_sums takes at a time: eight chains of two lanes, which keep the subtractions' latency hidden (four did not). */
export const CHOL_ROWS = 4;

/**
 * chol_sums(a, n, j, first, stride, h4): for the rows i = first, first + stride, ... below n,
 * four at a time (i..i+3, those below n): a[i][j+c] -= a[i][k]·h4[4k+c] for k < j in order,
 * c < 4. Rows of n float64 from byte a; h4: 4j float64.
 */
function cholSumsFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32], []);
  const [a, n, j, first, stride, h4] = [0, 1, 2, 3, 4, 5];
  const i = f.local(I32);
  const rowBytes = f.local(I32);
  const r = Array.from({ length: CHOL_ROWS }, () => f.local(I32));
  const off = f.local(I32);
  const h = f.local(I32);
  const p = Array.from({ length: 2 * CHOL_ROWS }, () => f.local(V128));
  const xs = Array.from({ length: CHOL_ROWS }, () => f.local(V128));
  const [h01, h23] = [f.local(V128), f.local(V128)];
  f.get(n).i32(8).op(OP.i32Mul).set(rowBytes);
  f.get(first).set(i);
  f.open(OP.block);
  f.open(OP.loop); // groups of rows
  f.get(i).get(n).op(OP.i32GeU).br(OP.brIf, 1);
  // r[q]: row i+q's entry j, or the last row below n again (its sums then computed twice, the same).
  f.get(a).get(i).get(rowBytes).op(OP.i32Mul).op(OP.i32Add).get(j).i32(8).op(OP.i32Mul).op(OP.i32Add).set(r[0]!);
  for (let q = 1; q < CHOL_ROWS; q++) {
    f.get(r[q - 1]!).set(r[q]!);
    f.get(i).i32(q).op(OP.i32Add).get(n).op(OP.i32LtU).open(OP.if).get(r[q - 1]!).get(rowBytes).op(OP.i32Add).set(r[q]!).op(OP.end);
  }
  r.forEach((row, q) => {
    f.get(row).v128Mem(SIMD.load, 0).set(p[2 * q]!);
    f.get(row).v128Mem(SIMD.load, 16).set(p[2 * q + 1]!);
  });
  // off runs over the terms k < j as a byte offset back from entry j: -8j .. -8.
  f.i32(0).get(j).i32(8).op(OP.i32Mul).op(OP.i32Sub).set(off);
  f.get(h4).set(h);
  f.open(OP.block);
  f.get(j).op(OP.i32Eqz).br(OP.brIf, 0);
  f.open(OP.loop); // k
  r.forEach((row, q) => f.get(row).get(off).op(OP.i32Add).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(xs[q]!));
  f.get(h).v128Mem(SIMD.load, 0).set(h01);
  f.get(h).v128Mem(SIMD.load, 16).set(h23);
  for (let q = 0; q < CHOL_ROWS; q++) {
    f.get(p[2 * q]!).get(xs[q]!).get(h01).simd(SIMD.f64x2Mul).simd(F64X2_SUB).set(p[2 * q]!);
    f.get(p[2 * q + 1]!).get(xs[q]!).get(h23).simd(SIMD.f64x2Mul).simd(F64X2_SUB).set(p[2 * q + 1]!);
  }
  f.get(h).i32(32).op(OP.i32Add).set(h);
  f.get(off).i32(8).op(OP.i32Add).tee(off).br(OP.brIf, 0); // until off reaches 0
  f.op(OP.end); // k
  f.op(OP.end); // block
  // The last row first: where the group's later rows repeat an earlier one, that one's store (the same sums) comes last.
  for (let q = CHOL_ROWS - 1; q >= 0; q--) {
    f.get(r[q]!).get(p[2 * q]!).v128Mem(SIMD.store, 0);
    f.get(r[q]!).get(p[2 * q + 1]!).v128Mem(SIMD.store, 16);
  }
  f.get(i).get(stride).op(OP.i32Add).set(i);
  f.br(OP.br, 0);
  f.op(OP.end); // groups
  f.op(OP.end); // block
  return f;
}

/**
 * add4_one(dst, src, count, rowBytes, c0, c1, c2, c3) / add4_two(dst, dst2, src, count, rowBytes,
 * c0..c3, d0..d3) / add4_four (four rows, sixteen coefficients): for e < count (even), dst[e] =
 * dst[e] + c0·src[e] + c1·src1[e] + c2·src2[e] + c3·src3[e], added left to right (and dst2 with
 * d0..d3, and so on), where src_m is src + m·rowBytes. Every row shares the source's loads.
 */
function addFourFunction(rows: 1 | 2 | 4): Code {
  const addresses: ValType[] = Array(rows + 3).fill(I32);
  const f = new Code([...addresses, ...Array<ValType>(4 * rows).fill(F64)], []);
  const dst = Array.from({ length: rows }, (_, r) => r);
  const [src, count, rowBytes] = [rows, rows + 1, rows + 2];
  const coef = Array.from({ length: 4 * rows }, (_, i) => rowBytes + 1 + i);
  const p = f.local(I32);
  const end = f.local(I32);
  const s1 = f.local(I32);
  const c = coef.map(() => f.local(V128));
  const v = [f.local(V128), f.local(V128), f.local(V128), f.local(V128)];
  const acc = f.local(V128);
  coef.forEach((param, i) => f.get(param).simd(SIMD.f64x2Splat).set(c[i]!));
  f.get(count).i32(8).op(OP.i32Mul).set(end);
  f.open(OP.block);
  f.get(end).op(OP.i32Eqz).br(OP.brIf, 0);
  f.open(OP.loop);
  f.get(src).get(p).op(OP.i32Add).tee(s1).v128Mem(SIMD.load, 0).set(v[0]!);
  for (let m = 1; m < 4; m++) f.get(s1).get(rowBytes).op(OP.i32Add).tee(s1).v128Mem(SIMD.load, 0).set(v[m]!);
  for (let r = 0; r < rows; r++) {
    f.get(dst[r]!).get(p).op(OP.i32Add).v128Mem(SIMD.load, 0).set(acc);
    for (let m = 0; m < 4; m++) f.get(acc).get(c[4 * r + m]!).get(v[m]!).simd(SIMD.f64x2Mul).simd(F64X2_ADD).set(acc);
    f.get(dst[r]!).get(p).op(OP.i32Add).get(acc).v128Mem(SIMD.store, 0);
  }
  f.get(p).i32(16).op(OP.i32Add).tee(p).get(end).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // loop
  f.op(OP.end); // block
  return f;
}

const cholModule = compiledOnce(() => assembleModule([
  { name: "chol_sums", code: cholSumsFunction() },
  { name: "add4_one", code: addFourFunction(1) },
  { name: "add4_two", code: addFourFunction(2) },
  { name: "add4_four", code: addFourFunction(4) },
], MAX_PAGES));

/**
 * The shared memory a factorization works in: the n×n working matrix at 0, L⁻¹'s n×n after it
 * where `inverse`, then `members` scratch rows of 4n float64.
 */
export interface CholeskyMemory {
  memory: WasmMemory;
  n: number;
  members: number;
  inverse: boolean;
}

/**
 * A memory for an n×n factorization by `members` threads (with L⁻¹ in it where both fit), or
 * null where the kernel cannot run (the scalar loops then work in plain memory).
 */
export function choleskyMemory(n: number, members: number): CholeskyMemory | null {
  const layout = choleskyLayout(n, members);
  if (!layout || !cholModule()) return null;
  const pages = Math.ceil(layout.bytes / 65536);
  return { memory: new wasm.Memory({ initial: pages, maximum: pages, shared: true }), n, members, inverse: layout.inverse };
}

/** What choleskyMemory would allocate for n inputs and `members` threads: its bytes, and whether L⁻¹ is in it; null: no kernel. */
export function choleskyLayout(n: number, members: number): { bytes: number; inverse: boolean } | null {
  const bytes = (matrices: number) => 8 * (matrices * n * n + members * 4 * n);
  if (n === 0 || bytes(1) > CHOLESKY_MAX_BYTES) return null;
  const inverse = bytes(2) <= CHOLESKY_MAX_BYTES;
  return { bytes: bytes(inverse ? 2 : 1), inverse };
}

type AddFourOne = (dst: number, src: number, count: number, rowBytes: number, c0: number, c1: number, c2: number, c3: number) => void;
type AddFourTwo = (dst: number, dst2: number, src: number, count: number, rowBytes: number, c0: number, c1: number, c2: number, c3: number, d0: number, d1: number, d2: number, d3: number) => void;
type AddFourFour = (dst0: number, dst1: number, dst2: number, dst3: number, src: number, count: number, rowBytes: number, ...coefficients: number[]) => void;

/** One member's kernel over a CholeskyMemory. */
export class CholeskyKernel {
  /** the n×n matrix, row-major, in the memory */
  readonly matrix: Float64Array;
  private readonly head: Float64Array;

  /** L⁻¹'s n×n (zeros at first), or null where the memory has no room for it */
  readonly inverse: Float64Array | null;
  private readonly n: number;

  private constructor(private readonly fn: { chol_sums: (a: number, n: number, j: number, first: number, stride: number, h4: number) => void; add4_one: AddFourOne; add4_two: AddFourTwo; add4_four: AddFourFour }, m: CholeskyMemory, rank: number) {
    const { n } = m;
    this.n = n;
    const matrices = m.inverse ? 2 : 1;
    this.matrix = new Float64Array(m.memory.buffer, 0, n * n);
    this.inverse = m.inverse ? new Float64Array(m.memory.buffer, 8 * n * n, n * n) : null;
    this.head = new Float64Array(m.memory.buffer, 8 * (matrices * n * n + rank * 4 * n), 4 * n);
  }

  /** Member `rank`'s kernel (its own scratch row), or null where WebAssembly SIMD is missing. */
  static over(m: CholeskyMemory, rank: number): CholeskyKernel | null {
    const module = cholModule();
    if (!module || rank >= m.members) return null;
    return new CholeskyKernel(new wasm.Instance(module, { env: { memory: m.memory } }).exports as CholeskyKernel["fn"], m, rank);
  }

  /**
   * For e in [from, from + count) (count even): dst[t0 + e] += c0·src[r + e] + c1·src[r + n + e]
   * + c2·src[r + 2n + e] + c3·src[r + 3n + e], left to right, and likewise dst[t1 + e] with d0..d3
   * where t1 >= 0. dst and src are this kernel's matrix or inverse; t0, t1, r are element offsets.
   */
  addFour(dst: Float64Array, src: Float64Array, r: number, from: number, count: number, t0: number, c0: number, c1: number, c2: number, c3: number, t1: number, d0: number, d1: number, d2: number, d3: number): void {
    const s = src.byteOffset + 8 * (r + from);
    const rowBytes = 8 * this.n;
    if (t1 < 0) this.fn.add4_one(dst.byteOffset + 8 * (t0 + from), s, count, rowBytes, c0, c1, c2, c3);
    else this.fn.add4_two(dst.byteOffset + 8 * (t0 + from), dst.byteOffset + 8 * (t1 + from), s, count, rowBytes, c0, c1, c2, c3, d0, d1, d2, d3);
  }

  /**
   * addFour into the four rows from element offset t (t, t + n, t + 2n, t + 3n), row q's
   * coefficients coefficients[4q..4q+3]: the source rows are read once for all four.
   */
  addFourToFour(dst: Float64Array, src: Float64Array, r: number, from: number, count: number, t: number, coefficients: Float64Array): void {
    const rowBytes = 8 * this.n;
    const d = dst.byteOffset + 8 * (t + from);
    const c = coefficients;
    // (each argument named: a spread goes through the array iterator, measured at ~0.3 µs a call)
    this.fn.add4_four(d, d + rowBytes, d + 2 * rowBytes, d + 3 * rowBytes, src.byteOffset + 8 * (r + from), count, rowBytes,
      c[0]!, c[1]!, c[2]!, c[3]!, c[4]!, c[5]!, c[6]!, c[7]!, c[8]!, c[9]!, c[10]!, c[11]!, c[12]!, c[13]!, c[14]!, c[15]!);
  }

  /**
   * Step j (a multiple of 4): for the rows first, first + stride, ... below n, entries j..j+3
   * less their sums over k < j with head rows j..j+3 (each entry's terms in k order).
   */
  subtractHead(j: number, first: number, stride: number): void {
    const { matrix: a, head, n } = this;
    for (let c = 0; c < 4; c++) {
      const g = (j + c) * n;
      for (let k = 0; k < j; k++) head[4 * k + c] = a[g + k]!;
    }
    this.fn.chol_sums(a.byteOffset, n, j, first, stride, head.byteOffset);
  }
}
