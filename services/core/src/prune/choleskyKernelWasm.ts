/**
 * The Cholesky factor's bulk (sparseGpt.ts choleskyLowerInPlace: each later row's entries in a
 * step's four columns j..j+3, less its dot products with the four head rows over k < j) by a
 * WebAssembly SIMD kernel. Each float64x2 lane is one entry's chain, started from the entry and
 * taking its terms in k order, one multiplication then one subtraction (WebAssembly never fuses
 * them): the scalar loop's bits. Two rows at a time share the head's loads, which come
 * interleaved (the four head rows' k-th entries side by side, copied per step) so that one load
 * gives two columns.
 *
 * The matrix has to live in the kernel's memory: a CholeskyMemory holds it (n×n float64 at 0)
 * and one scratch row of interleaved head entries per team member after it. It is shared memory,
 * so that a factorization team's members (solveTeam.ts) each run their own instance over it.
 * Where the matrix would pass MAX_KERNEL_BYTES or WebAssembly SIMD is missing, there is no
 * memory and the scalar loop runs (the same bits).
 */
import { Code, I32, OP, SIMD, V128, assembleModule, compiledOnce, wasm, type WasmMemory } from "./wasmAssembler.js";
import { MAX_KERNEL_BYTES } from "./gramKernelWasm.js";

const F64X2_SUB = 241;
/** The most pages a shared memory may have (4 GiB): the import's limit, not what is allocated. */
const MAX_PAGES = 65536;

/**
 * chol_sums(a, n, j, first, stride, h4): for the rows i = first, first + stride, ... below n,
 * two at a time (i and i+1; i alone when i+1 = n): a[i][j+c] -= a[i][k]·h4[4k+c] for k < j in
 * order, c < 4. Rows of n float64 from byte a; h4: 4j float64.
 */
function cholSumsFunction(): Code {
  const f = new Code([I32, I32, I32, I32, I32, I32], []);
  const [a, n, j, first, stride, h4] = [0, 1, 2, 3, 4, 5];
  const i = f.local(I32);
  const rowBytes = f.local(I32);
  const r0 = f.local(I32);
  const r1 = f.local(I32);
  const x = f.local(I32);
  const y = f.local(I32);
  const h = f.local(I32);
  const end = f.local(I32);
  const [p01, p23, q01, q23] = [f.local(V128), f.local(V128), f.local(V128), f.local(V128)];
  const [xs, ys, h01, h23] = [f.local(V128), f.local(V128), f.local(V128), f.local(V128)];
  f.get(n).i32(8).op(OP.i32Mul).set(rowBytes);
  f.get(first).set(i);
  f.open(OP.block);
  f.open(OP.loop); // rows
  f.get(i).get(n).op(OP.i32GeU).br(OP.brIf, 1);
  f.get(a).get(i).get(rowBytes).op(OP.i32Mul).op(OP.i32Add).tee(r0).set(r1);
  f.get(i).i32(1).op(OP.i32Add).get(n).op(OP.i32LtU).open(OP.if).get(r0).get(rowBytes).op(OP.i32Add).set(r1).op(OP.end);
  // x, y: the rows' entries j (the chains' starts); end: where row i's terms end.
  f.get(r0).get(j).i32(8).op(OP.i32Mul).op(OP.i32Add).set(end);
  f.get(end).v128Mem(SIMD.load, 0).set(p01);
  f.get(end).v128Mem(SIMD.load, 16).set(p23);
  f.get(r1).get(j).i32(8).op(OP.i32Mul).op(OP.i32Add).tee(y).v128Mem(SIMD.load, 0).set(q01);
  f.get(y).v128Mem(SIMD.load, 16).set(q23);
  f.get(r0).set(x);
  f.get(r1).set(y);
  f.get(h4).set(h);
  f.open(OP.block);
  f.get(j).op(OP.i32Eqz).br(OP.brIf, 0);
  f.open(OP.loop); // k
  f.get(x).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(xs);
  f.get(y).mem(OP.f64Load, 3).simd(SIMD.f64x2Splat).set(ys);
  f.get(h).v128Mem(SIMD.load, 0).set(h01);
  f.get(h).v128Mem(SIMD.load, 16).set(h23);
  f.get(p01).get(xs).get(h01).simd(SIMD.f64x2Mul).simd(F64X2_SUB).set(p01);
  f.get(p23).get(xs).get(h23).simd(SIMD.f64x2Mul).simd(F64X2_SUB).set(p23);
  f.get(q01).get(ys).get(h01).simd(SIMD.f64x2Mul).simd(F64X2_SUB).set(q01);
  f.get(q23).get(ys).get(h23).simd(SIMD.f64x2Mul).simd(F64X2_SUB).set(q23);
  f.get(y).i32(8).op(OP.i32Add).set(y);
  f.get(h).i32(32).op(OP.i32Add).set(h);
  f.get(x).i32(8).op(OP.i32Add).tee(x).get(end).op(OP.i32LtU).br(OP.brIf, 0);
  f.op(OP.end); // k
  f.op(OP.end); // block
  // Row i+1 first: where it is row i again (i alone), row i's store comes last (the same sums).
  f.get(r1).get(j).i32(8).op(OP.i32Mul).op(OP.i32Add).tee(y).get(q01).v128Mem(SIMD.store, 0);
  f.get(y).get(q23).v128Mem(SIMD.store, 16);
  f.get(end).get(p01).v128Mem(SIMD.store, 0);
  f.get(end).get(p23).v128Mem(SIMD.store, 16);
  f.get(i).get(stride).op(OP.i32Add).set(i);
  f.br(OP.br, 0);
  f.op(OP.end); // rows
  f.op(OP.end); // block
  return f;
}

const cholModule = compiledOnce(() => assembleModule([{ name: "chol_sums", code: cholSumsFunction() }], MAX_PAGES));

/** The shared memory a factorization works in: the n×n matrix at 0, then `members` scratch rows of 4n float64. */
export interface CholeskyMemory {
  memory: WasmMemory;
  n: number;
  members: number;
}

/** A memory for an n×n factorization by `members` threads, or null where the kernel cannot run (the scalar loop then works in plain memory). */
export function choleskyMemory(n: number, members: number): CholeskyMemory | null {
  const bytes = 8 * (n * n + members * 4 * n);
  if (n === 0 || bytes > MAX_KERNEL_BYTES || !cholModule()) return null;
  const pages = Math.ceil(bytes / 65536);
  return { memory: new wasm.Memory({ initial: pages, maximum: pages, shared: true }), n, members };
}

/** One member's kernel over a CholeskyMemory. */
export class CholeskyKernel {
  /** the n×n matrix, row-major, in the memory */
  readonly matrix: Float64Array;
  private readonly head: Float64Array;

  private readonly n: number;

  private constructor(private readonly run: (a: number, n: number, j: number, first: number, stride: number, h4: number) => void, m: CholeskyMemory, rank: number) {
    const { n } = m;
    this.n = n;
    this.matrix = new Float64Array(m.memory.buffer, 0, n * n);
    this.head = new Float64Array(m.memory.buffer, 8 * (n * n + rank * 4 * n), 4 * n);
  }

  /** Member `rank`'s kernel (its own scratch row), or null where WebAssembly SIMD is missing. */
  static over(m: CholeskyMemory, rank: number): CholeskyKernel | null {
    const module = cholModule();
    if (!module || rank >= m.members) return null;
    const { chol_sums: run } = new wasm.Instance(module, { env: { memory: m.memory } }).exports as { chol_sums: CholeskyKernel["run"] };
    return new CholeskyKernel(run, m, rank);
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
    this.run(a.byteOffset, n, j, first, stride, head.byteOffset);
  }
}
