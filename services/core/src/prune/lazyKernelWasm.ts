/**
 * SparseGPT's lazy update (sparseGpt.ts lazyUpdate: W[cc, :] -= Σ_k E[k, :]·U[k, cc] over a slab's
 * live rows k, for every later row cc) by a WebAssembly SIMD kernel. Each float64x2 lane is one
 * output o's sum, started at 0 and taking its terms in k order, one multiplication then one
 * addition (WebAssembly never fuses them), then subtracted from W: the bits of the scalar loop.
 * The kernel takes two rows cc and eight outputs at a time (sixteen sums in eight registers),
 * rows in tiles of 32 so that the tile's U columns stay in cache while E's columns go by.
 *
 * The working weights W live in the kernel's memory for the whole update (obsUpdate works on
 * them there), beside one slab's E, its live rows packed, U's slab columns and the row list:
 * the memory of the copies the scalar loop makes, one memory per linear, dropped with W. Where
 * the outputs are not a multiple of 8, the memory would pass MAX_KERNEL_BYTES, or WebAssembly
 * SIMD is missing, the scalar loop runs (the same bits).
 *
 * The same memory serves the slab's own update (obsUpdate: after column c's error row E[k] is
 * known, W[cc, :] -= E[k, :]·U[c, cc] for the slab's rows cc from c), one row at a time, each
 * entry one multiplication then one subtraction as the scalar loop does (sub_rows).
 */
import { Code, I32, OP, SIMD, V128, assembleModule, compiledOnce, wasm } from "./wasmAssembler.js";
import { MAX_KERNEL_BYTES } from "./gramKernelWasm.js";

const TILE_ROWS = 32;
const LANES = 8;
const F64X2_ADD = 240;
const F64X2_SUB = 241;

/**
 * lazy_rows(list, count, m, ut, e, out, w): for the rows t = list[p], p < count (int32), in tiles of
 * 32, two at a time: W[t][o] -= Σ_{q<m} U[t][q]·E[q][o] for o < out (a multiple of 8), W rows of
 * out float64 at w, U rows of m float64 at ut, E rows of out float64 at e.
 */
function lazyRowsFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32, I32], []);
  const [list, count, m, ut, e, out, w] = [0, 1, 2, 3, 4, 5, 6];
  const tile = f.local(I32);
  const tileEnd = f.local(I32);
  const ob = f.local(I32);
  const p = f.local(I32);
  const q = f.local(I32);
  const u0 = f.local(I32);
  const u1 = f.local(I32);
  const ea = f.local(I32);
  const rowBytes = f.local(I32);
  const at = f.local(I32);
  const acc = Array.from({ length: 8 }, () => f.local(V128));
  const s = [f.local(V128), f.local(V128)];
  const v = Array.from({ length: 4 }, () => f.local(V128));
  const second = f.local(I32);
  f.get(out).i32(8).op(OP.i32Mul).set(rowBytes);
  f.get(count).op(OP.i32Eqz).open(OP.if).op(OP.return).op(OP.end);
  f.open(OP.loop); // tile
  f.get(tile).i32(TILE_ROWS).op(OP.i32Add).tee(tileEnd).get(count).op(OP.i32GtU).open(OP.if).get(count).set(tileEnd).op(OP.end);
  f.i32(0).set(ob);
  f.open(OP.loop); // ob
  f.get(tile).set(p);
  f.open(OP.loop); // p
  // u0, u1: U rows of list[p] and list[p+1] (list[p] again when p is the tile's last).
  f.get(p).i32(1).op(OP.i32Add).get(tileEnd).op(OP.i32LtU).set(second);
  f.get(list).get(p).i32(4).op(OP.i32Mul).op(OP.i32Add).mem(OP.i32Load, 2).get(m).op(OP.i32Mul).i32(8).op(OP.i32Mul).get(ut).op(OP.i32Add).set(u0);
  f.get(list).get(p).get(second).op(OP.i32Add).i32(4).op(OP.i32Mul).op(OP.i32Add).mem(OP.i32Load, 2).get(m).op(OP.i32Mul).i32(8).op(OP.i32Mul).get(ut).op(OP.i32Add).set(u1);
  for (const a of acc) f.v128i32(0, 0, 0, 0).set(a);
  f.get(e).get(ob).i32(8).op(OP.i32Mul).op(OP.i32Add).set(ea);
  f.i32(0).set(q);
  f.open(OP.block);
  f.get(m).op(OP.i32Eqz).br(OP.brIf, 0);
  f.open(OP.loop); // q
  f.get(u0).get(q).i32(8).op(OP.i32Mul).op(OP.i32Add).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(s[0]!);
  f.get(u1).get(q).i32(8).op(OP.i32Mul).op(OP.i32Add).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(s[1]!);
  v.forEach((x, k) => f.get(ea).v128Mem(SIMD.load, 16 * k).set(x));
  for (let r = 0; r < 2; r++) {
    for (let k = 0; k < 4; k++) {
      const a = acc[4 * r + k]!;
      f.get(a).get(s[r]!).get(v[k]!).simd(SIMD.f64x2Mul).simd(F64X2_ADD).set(a);
    }
  }
  f.get(ea).get(rowBytes).op(OP.i32Add).set(ea);
  f.get(q).i32(1).op(OP.i32Add).tee(q).get(m).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // q
  f.op(OP.end); // block
  // W rows: W[t][ob..ob+7] -= the sums (the second row only when it is another row).
  for (let r = 0; r < 2; r++) {
    if (r === 1) f.get(second).open(OP.if);
    f.get(list).get(p).i32(r).op(OP.i32Add).i32(4).op(OP.i32Mul).op(OP.i32Add).mem(OP.i32Load, 2).get(rowBytes).op(OP.i32Mul).get(w).op(OP.i32Add).get(ob).i32(8).op(OP.i32Mul).op(OP.i32Add).set(at);
    for (let k = 0; k < 4; k++) f.get(at).get(at).v128Mem(SIMD.load, 16 * k).get(acc[4 * r + k]!).simd(F64X2_SUB).v128Mem(SIMD.store, 16 * k);
    if (r === 1) f.op(OP.end);
  }
  f.get(p).i32(2).op(OP.i32Add).tee(p).get(tileEnd).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // p
  f.get(ob).i32(LANES).op(OP.i32Add).tee(ob).get(out).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // ob
  f.get(tileEnd).tee(tile).get(count).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // tile
  return f;
}

/**
 * sub_rows(w, e, coefs, rows, out): W[r][o] -= E[o]·coefs[r] for r < rows and o < out (a multiple
 * of 8), W rows of out float64 from w, E one row of out float64 at e, coefs float64.
 */
function subRowsFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32], []);
  const [w, e, coefs, rows, out] = [0, 1, 2, 3, 4];
  const r = f.local(I32);
  const at = f.local(I32);
  const end = f.local(I32);
  const ea = f.local(I32);
  const rowBytes = f.local(I32);
  const s = f.local(V128);
  f.get(out).i32(8).op(OP.i32Mul).set(rowBytes);
  f.get(rows).op(OP.i32Eqz).open(OP.if).op(OP.return).op(OP.end);
  f.get(out).op(OP.i32Eqz).open(OP.if).op(OP.return).op(OP.end);
  f.open(OP.loop); // r
  f.get(coefs).get(r).i32(8).op(OP.i32Mul).op(OP.i32Add).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(s);
  f.get(w).get(r).get(rowBytes).op(OP.i32Mul).op(OP.i32Add).tee(at).get(rowBytes).op(OP.i32Add).set(end);
  f.get(e).set(ea);
  f.open(OP.loop); // eight outputs a step
  for (let k = 0; k < 4; k++) {
    f.get(at).get(at).v128Mem(SIMD.load, 16 * k).get(ea).v128Mem(SIMD.load, 16 * k).get(s).simd(SIMD.f64x2Mul).simd(F64X2_SUB).v128Mem(SIMD.store, 16 * k);
  }
  f.get(ea).i32(64).op(OP.i32Add).set(ea);
  f.get(at).i32(64).op(OP.i32Add).tee(at).get(end).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // outputs
  f.get(r).i32(1).op(OP.i32Add).tee(r).get(rows).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // r
  return f;
}

const lazyModule = compiledOnce(() => assembleModule([{ name: "lazy_rows", code: lazyRowsFunction() }, { name: "sub_rows", code: subRowsFunction() }]));

type SubRows = (w: number, e: number, coefs: number, rows: number, out: number) => void;

/** One linear's OBS update memory: W, and the slab's E, packed live E rows, U columns and row list. */
export class LazyKernel {
  /** W [n, out], where obsUpdate works on it. */
  readonly weights: Float64Array;
  /** One slab's E [slab, out]. */
  readonly errors: Float64Array;
  private readonly live: Float64Array;
  private readonly columns: Float64Array;
  /** U[c, cc] for the slab's rows cc from c, for subtractErrorRow */
  private readonly coefs: Float64Array;
  private readonly rows: Int32Array;

  private constructor(
    private readonly run: (list: number, count: number, m: number, ut: number, e: number, out: number, w: number) => void,
    private readonly subRows: SubRows,
    buffer: ArrayBuffer | SharedArrayBuffer, readonly n: number, readonly out: number, readonly slab: number,
  ) {
    let at = 0;
    const take = (length: number) => {
      const view = new Float64Array(buffer, at, length);
      at += length * 8;
      return view;
    };
    this.weights = take(n * out);
    this.errors = take(slab * out);
    this.live = take(slab * out);
    this.columns = take(n * slab);
    this.coefs = take(slab);
    this.rows = new Int32Array(buffer, at, n);
  }

  /** The kernel for an [n, out] weight and slabs of `slab` rows, or null where the scalar loop must run. */
  static create(n: number, out: number, slab: number): LazyKernel | null {
    const bytes = 8 * (n * out + 2 * slab * out + n * slab + slab) + 4 * n;
    if (out % LANES !== 0 || n === 0 || out === 0 || bytes > MAX_KERNEL_BYTES) return null;
    const module = lazyModule();
    if (!module) return null;
    const memory = new wasm.Memory({ initial: Math.ceil(bytes / 65536) });
    const { lazy_rows: run, sub_rows: subRows } = new wasm.Instance(module, { env: { memory } }).exports as { lazy_rows: LazyKernel["run"]; sub_rows: SubRows };
    return new LazyKernel(run, subRows, memory.buffer, n, out, slab);
  }

  /**
   * W[cc, :] -= E[k, :]·U[c·n + cc] for cc in [c, end) (end - c at most the slab), each entry
   * one multiplication then one subtraction: E is this.errors, U row-major [n, n].
   */
  subtractErrorRow(k: number, c: number, end: number, u: Float64Array, n: number): void {
    const { out } = this;
    this.coefs.set(u.subarray(c * n + c, c * n + end));
    this.subRows(this.weights.byteOffset + c * out * 8, this.errors.byteOffset + k * out * 8, this.coefs.byteOffset, end - c, out);
  }

  /** Where the caller writes a slab's U columns over its live rows (`length` = rows × live), for subtract. */
  slabColumns(length: number): Float64Array {
    return this.columns.subarray(0, length);
  }

  /**
   * W[i2 + t, :] -= Σ_q ut[t·m + q]·E[live[q], :] for the rows t in `dense` (each row's sum over
   * q in order): E is this.errors, ut the slab columns of U over the live rows (rows × m), as
   * written into slabColumns.
   */
  subtract(i2: number, live: readonly number[], dense: readonly number[]): void {
    const { out } = this;
    const m = live.length;
    const base = this.weights.byteOffset;
    let e = this.errors.byteOffset;
    if (live.some((k, q) => k !== q)) {
      live.forEach((k, q) => this.live.set(this.errors.subarray(k * out, (k + 1) * out), q * out));
      e = this.live.byteOffset;
    }
    this.rows.set(dense);
    this.run(this.rows.byteOffset, dense.length, m, this.columns.byteOffset, e, out, base + i2 * out * 8);
  }
}
