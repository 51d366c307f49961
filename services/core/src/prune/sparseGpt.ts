/**
 * SparseGPT's compression of one linear (METHODS.md §1 steps 3-7, IST-DASLab/sparsegpt
 * sparsegpt.py:54-142): dead inputs, relative dampening, the upper Cholesky factor U of H⁻¹,
 * 128-input-channel slabs with one score threshold per slab (the official `+1` kept) or N:M,
 * the OBS update of the surviving weights with lazy updates between slabs, and the weights
 * written back in their own type with pruned entries as exact zeros.
 *
 * Everything is computed in float64 in a fixed order, so every mode gets the same bits. The
 * working layout is the ONNX one, B[in, out]: a torch column (an input channel) is a contiguous
 * row here, which makes every update of the algorithm a run over contiguous memory.
 */
import { InvalidArgumentError, NumericError } from "../errors.js";
import { OnnxDataType as DT, floatToBfloat16, floatToHalf, toFloat32, typeName } from "../onnx/dtype.js";
import type { Pattern, WeightMatrix } from "./maskSelect.js";
import { SOLO, evenSplit, triangularBounds, type SolveTeam, type TeamSplit } from "./solveTeam.js";
import { gramQuadratic } from "./gramKernelWasm.js";
import { LazyKernel } from "./lazyKernelWasm.js";
import { CHOL_ROWS, CholeskyKernel, choleskyMemory } from "./choleskyKernelWasm.js";
import { kthSmallest } from "./orderStatistic.js";

export interface SparseGptOptions {
  sparsity: number;
  pattern: Pattern;
  /** input channels per slab (official 128) */
  blockSize?: number;
  /** relative dampening (official 0.01) */
  percDamp?: number;
}

export interface SparseGptResult {
  pruned: number;
  total: number;
  /** ‖ΔW·Xᵀ‖² / ‖W·Xᵀ‖² over the calibration tokens, through H (0 when the layer sees no signal) */
  relativeError: number;
}

export const SPARSEGPT_BLOCK_SIZE = 128;
export const SPARSEGPT_PERCDAMP = 0.01;

/** H after steps 3-5, shared by every linear that reads the same input (q/k/v, gate/up). */
export interface PreparedHessian {
  /** H as accumulated (undamped), for the reconstruction error */
  hessian: Float64Array;
  /** U with H⁻¹ = UᵀU (H with dead inputs set to 1 and dampened), row-major upper */
  u: Float64Array;
  /** 1 for inputs with H[i,i] == 0: their ONNX rows are zeroed */
  dead: Uint8Array;
  n: number;
}

/** Where U is allocated: plain memory, or shared memory that several solve threads read (solvePool.ts). */
export type Float64Allocator = (length: number) => Float64Array;
const plainFloat64: Float64Allocator = (length) => new Float64Array(length);

/**
 * Steps 3-5: dead inputs, dampening relative to the mean of the diagonal (after the dead fix),
 * and U (allocated by `alloc`). Throws NumericError naming `subject` when H is not positive
 * definite after dampening.
 */
export function prepareHessian(hessian: Float64Array, n: number, subject: string, percDamp = SPARSEGPT_PERCDAMP, alloc = plainFloat64): PreparedHessian {
  if (hessian.length !== n * n) throw new InvalidArgumentError(subject, `Hessian has ${hessian.length} entries, the layer needs ${n}x${n}`);
  // The working copy in the Cholesky kernel's memory where it can run (the same bits either way).
  const memory = choleskyMemory(n, 1);
  const kernel = memory && CholeskyKernel.over(memory, 0);
  const a = kernel ? kernel.matrix : new Float64Array(n * n);
  a.set(hessian);
  const dead = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    if (a[i * n + i] === 0) {
      a[i * n + i] = 1;
      dead[i] = 1;
    }
  }
  let diagSum = 0;
  for (let i = 0; i < n; i++) diagSum += a[i * n + i]!;
  const damp = percDamp * (diagSum / n);
  for (let i = 0; i < n; i++) a[i * n + i]! += damp;
  return { hessian, u: factorInto(a, alloc(n * n), n, subject, SOLO, evenSplit(1), [], kernel), dead, n };
}

/**
 * Prunes `w` in place (its bytes are rewritten) given H[in, in] (row-major, symmetric, not
 * modified). Throws NumericError naming the layer when H is not positive definite after dampening.
 */
export function sparseGptCompress(w: WeightMatrix, hessian: Float64Array, opts: SparseGptOptions): SparseGptResult {
  return sparseGptCompressPrepared(w, prepareHessian(hessian, w.inDim, w.name, opts.percDamp), opts);
}

/** sparseGptCompress with steps 3-5 already done (prepareHessian). */
export function sparseGptCompressPrepared(w: WeightMatrix, prepared: PreparedHessian, opts: SparseGptOptions): SparseGptResult {
  checkUpdate(w, prepared, opts);
  const energy = outputEnergy(prepared.hessian, w);
  const { pruned, total, errorEnergy } = sparseGptUpdate(w, prepared, opts);
  return { pruned, total, relativeError: relativeError(errorEnergy, energy) };
}

/** What SparseGPT's update did to one linear: pruned entries, and tr(ΔBᵀHΔB) of the change. */
export interface SparseGptUpdate {
  pruned: number;
  total: number;
  errorEnergy: number;
}

/**
 * Steps 6-7: prunes `w` in place (its bytes are rewritten), and measures the output error of the
 * change through H (the numerator of relativeError).
 */
export function sparseGptUpdate(w: WeightMatrix, prepared: PreparedHessian, opts: SparseGptOptions): SparseGptUpdate {
  checkUpdate(w, prepared, opts);
  const n = w.inDim;
  const out = w.outDim;
  const original = readWeights(w);
  const { weights: W, pruned } = obsUpdate(original, prepared, opts, out);
  writeWeights(w, W);
  const written = readWeights(w);
  let errorEnergy = gramQuadratic(prepared.hessian, n, out, (bt, inP) => transposeDifferenceInto(bt, inP, n, out, written, original));
  if (errorEnergy === null) {
    const delta = new Float64Array(original.length);
    for (let i = 0; i < delta.length; i++) delta[i] = written[i]! - original[i]!;
    errorEnergy = quadratic(prepared.hessian, delta, n, out);
  }
  return { pruned, total: n * out, errorEnergy };
}

/** The options and shapes sparseGptUpdate refuses (InvalidArgumentError), before any work. */
export function checkUpdate(w: WeightMatrix, prepared: PreparedHessian, opts: SparseGptOptions): void {
  const n = w.inDim;
  const blockSize = opts.blockSize ?? SPARSEGPT_BLOCK_SIZE;
  const s = opts.sparsity;
  if (!(s >= 0 && s < 1)) throw new InvalidArgumentError("sparsity", `must be in [0, 1), got ${s}`);
  if (prepared.n !== n) throw new InvalidArgumentError(w.name, `Hessian is ${prepared.n}x${prepared.n}, the layer has ${n} inputs`);
  if (opts.pattern.kind === "nm" && (n % opts.pattern.m !== 0 || blockSize % opts.pattern.m !== 0)) {
    throw new InvalidArgumentError(w.name, `input dimension ${n} is not a multiple of M=${opts.pattern.m} for the ${opts.pattern.n}:${opts.pattern.m} pattern`);
  }
}

/**
 * tr(BᵀHB) of the dense weight: the output energy the calibration tokens see (relativeError's
 * denominator). It needs H only, not its factor: a solve pool computes it beside the factoring.
 */
export function outputEnergy(hessian: Float64Array, w: WeightMatrix): number {
  const { inDim: n, outDim: out } = w;
  const energy = gramQuadratic(hessian, n, out, (bt, inP) => {
    const vals = decode(w, n * out);
    if (w.layout === "out_in") for (let o = 0; o < out; o++) for (let c = 0; c < n; c++) bt[o * inP + c] = vals[o * n + c]!;
    else transposeInto(bt, inP, n, out, vals);
  });
  return energy ?? quadratic(hessian, readWeights(w), n, out);
}

/** Square tiles of the transposes below (a plain double loop strides through memory). */
const TRANSPOSE_TILE = 64;

/**
 * bt[o·inP + c] = b[c·out + o] for c < n, o < out. (Its own loop, not one loop calling a value
 * function: given two functions, V8 inlined neither; a 1024 x 2816 transpose into mapped memory
 * took 18-21 ms that way against 4-7 ms.)
 */
function transposeInto(bt: Float64Array, inP: number, n: number, out: number, b: Float32Array): void {
  for (let c0 = 0; c0 < n; c0 += TRANSPOSE_TILE) {
    for (let o0 = 0; o0 < out; o0 += TRANSPOSE_TILE) {
      for (let c = c0, cEnd = Math.min(c0 + TRANSPOSE_TILE, n); c < cEnd; c++) {
        for (let o = o0, oEnd = Math.min(o0 + TRANSPOSE_TILE, out); o < oEnd; o++) bt[o * inP + c] = b[c * out + o]!;
      }
    }
  }
}

/** bt[o·inP + c] = a[c·out + o] - b[c·out + o], as transposeInto. */
function transposeDifferenceInto(bt: Float64Array, inP: number, n: number, out: number, a: Float64Array, b: Float64Array): void {
  for (let c0 = 0; c0 < n; c0 += TRANSPOSE_TILE) {
    for (let o0 = 0; o0 < out; o0 += TRANSPOSE_TILE) {
      for (let c = c0, cEnd = Math.min(c0 + TRANSPOSE_TILE, n); c < cEnd; c++) {
        for (let o = o0, oEnd = Math.min(o0 + TRANSPOSE_TILE, out); o < oEnd; o++) bt[o * inP + c] = a[c * out + o]! - b[c * out + o]!;
      }
    }
  }
}

/** tr(ΔBᵀHΔB) / tr(BᵀHB): the output error the calibration tokens see, relative to the output. */
export function relativeError(errorEnergy: number, energy: number): number {
  return energy > 0 ? errorEnergy / energy : 0;
}

/**
 * Step 6 on the weights as float64 B[in, out] (`original` is not modified): the updated weights,
 * pruned entries exact zeros, and how many were pruned.
 */
export function obsUpdate(original: Float64Array, prepared: PreparedHessian, opts: SparseGptOptions, out: number): { weights: Float64Array; pruned: number } {
  const n = prepared.n;
  const blockSize = opts.blockSize ?? SPARSEGPT_BLOCK_SIZE;
  const s = opts.sparsity;
  // W where the lazy update's kernel works on it (or a plain copy where it cannot run).
  const kernel = LazyKernel.create(n, out, blockSize);
  const W = kernel ? kernel.weights : original.slice();
  if (kernel) W.set(original);
  for (let i = 0; i < n; i++) if (prepared.dead[i]) W.fill(0, i * out, (i + 1) * out);
  const U = prepared.u;

  // Step 6: slabs of input channels.
  let pruned = 0;
  const acc = new Float64Array(out);
  for (let i1 = 0; i1 < n; i1 += blockSize) {
    const i2 = Math.min(i1 + blockSize, n);
    const count = i2 - i1;
    const mask = new Uint8Array(count * out);
    if (opts.pattern.kind === "unstructured" && s > 0) slabMask(W, U, n, out, i1, count, s, mask);
    const Q = new Float64Array(count * out);
    const E = kernel ? kernel.errors.subarray(0, count * out) : new Float64Array(count * out);
    for (let k = 0; k < count; k++) {
      const c = i1 + k;
      const d = U[c * n + c]!;
      if (opts.pattern.kind === "nm" && k % opts.pattern.m === 0) nmMask(W, U, n, out, c, k, opts.pattern.n, opts.pattern.m, mask);
      const rowW = c * out;
      for (let o = 0; o < out; o++) {
        const wv = W[rowW + o]!;
        const q = mask[k * out + o] ? 0 : wv;
        Q[k * out + o] = q;
        E[k * out + o] = (wv - q) / d;
      }
      // W1[:, k:] -= err ⊗ U1[k, k:]
      if (kernel) {
        kernel.subtractErrorRow(k, c, i2, U, n);
        continue;
      }
      for (let cc = c; cc < i2; cc++) {
        const u = U[c * n + cc]!;
        const rowC = cc * out;
        const eBase = k * out;
        for (let o = 0; o < out; o++) W[rowC + o]! -= E[eBase + o]! * u;
      }
    }
    for (let k = 0; k < count; k++) {
      for (let o = 0; o < out; o++) if (mask[k * out + o]) pruned++;
    }
    W.set(Q, i1 * out);
    lazyUpdate(W, E, U, n, out, i1, count, acc, kernel);
  }

  return { weights: W, pruned };
}

/**
 * Lazy update: W[:, i2:] -= E1·U[i1:i2, i2:], each entry's sum (over k in order, terms with
 * U = 0 left out) formed before it is subtracted. The sums are dot products of E's columns with
 * U's slab columns, four rows cc and two outputs at a time (dot2x4), over E transposed so that
 * each runs over contiguous memory. Slab rows k whose U is zero for every cc
 * (dead inputs) are left out of those copies; a row cc with another zero term keeps the
 * row-by-row form, which leaves it out.
 */
function lazyUpdate(W: Float64Array, E: Float64Array, U: Float64Array, n: number, out: number, i1: number, count: number, acc: Float64Array, kernel: LazyKernel | null): void {
  const i2 = i1 + count;
  const rows = n - i2;
  if (rows <= 0) return;
  const live: number[] = [];
  for (let k = 0; k < count; k++) {
    const uRow = (i1 + k) * n + i2;
    for (let r = 0; r < rows; r++) {
      if (U[uRow + r] !== 0) {
        live.push(k);
        break;
      }
    }
  }
  const m = live.length;
  // U's slab column of row cc over the live k, contiguous: ut[(cc - i2) * m + q] = U[i1 + live[q], cc].
  // (Written where the kernel reads it, when there is one.)
  const ut = kernel ? kernel.slabColumns(rows * m) : new Float64Array(rows * m);
  const dense = new Uint8Array(rows).fill(1);
  live.forEach((k, q) => {
    const uRow = (i1 + k) * n + i2;
    for (let r = 0; r < rows; r++) {
      const u = U[uRow + r]!;
      ut[r * m + q] = u;
      if (u === 0) dense[r] = 0;
    }
  });
  if (kernel) {
    // Rows with every live term are the kernel's; the others keep the row-by-row form below.
    const full: number[] = [];
    for (let t = 0; t < rows; t++) if (dense[t]) full.push(t);
    kernel.subtract(i2, live, full);
    for (let t = 0; t < rows; t++) if (!dense[t]) subtractRowSums(W, E, U, n, out, i1, count, i2 + t, acc);
    return;
  }
  const et = new Float64Array(out * m);
  live.forEach((k, q) => {
    for (let o = 0; o < out; o++) et[o * m + q] = E[k * out + o]!;
  });
  const sums = new Float64Array(8);
  let r = 0;
  while (r < rows) {
    if (r + 3 < rows && dense[r] && dense[r + 1] && dense[r + 2] && dense[r + 3]) {
      const u0 = r * m;
      const w0 = (i2 + r) * out;
      for (let o = 0; o < out; o += 2) {
        // Outputs o and o+1 (the last alone: its row given twice).
        const o1 = Math.min(o + 1, out - 1);
        dot2x4(et, o * m, o1 * m, ut, u0, m, m, sums);
        for (let t = 0; t < 4; t++) {
          W[w0 + t * out + o]! -= sums[t]!;
          if (o1 > o) W[w0 + t * out + o1]! -= sums[4 + t]!;
        }
      }
      r += 4;
      continue;
    }
    subtractRowSums(W, E, U, n, out, i1, count, i2 + r, acc);
    r++;
  }
}

/** W[cc, :] -= Σ_k E[k, :]·U[i1 + k, cc], the sum over k in order without the terms of U = 0. */
function subtractRowSums(W: Float64Array, E: Float64Array, U: Float64Array, n: number, out: number, i1: number, count: number, cc: number, acc: Float64Array): void {
  acc.fill(0);
  for (let k = 0; k < count; k++) {
    const u = U[(i1 + k) * n + cc]!;
    if (u === 0) continue;
    const eBase = k * out;
    for (let o = 0; o < out; o++) acc[o]! += E[eBase + o]! * u;
  }
  const rowC = cc * out;
  for (let o = 0; o < out; o++) W[rowC + o]! -= acc[o]!;
}

/**
 * sums[4p + t] = Σ_q x[xp + q]·y[y0 + t·stride + q] over q < len in order, for rows p < 2 at x0
 * and x1 and t < 4: eight independent chains (a single one waits on each addition), each load
 * shared by two or four of them.
 */
function dot2x4(x: Float64Array, x0: number, x1: number, y: Float64Array, y0: number, stride: number, len: number, sums: Float64Array): void {
  const y1 = y0 + stride;
  const y2 = y1 + stride;
  const y3 = y2 + stride;
  let a0 = 0;
  let a1 = 0;
  let a2 = 0;
  let a3 = 0;
  let b0 = 0;
  let b1 = 0;
  let b2 = 0;
  let b3 = 0;
  for (let q = 0; q < len; q++) {
    const u = x[x0 + q]!;
    const v = x[x1 + q]!;
    const w0 = y[y0 + q]!;
    const w1 = y[y1 + q]!;
    const w2 = y[y2 + q]!;
    const w3 = y[y3 + q]!;
    a0 += u * w0;
    a1 += u * w1;
    a2 += u * w2;
    a3 += u * w3;
    b0 += v * w0;
    b1 += v * w1;
    b2 += v * w2;
    b3 += v * w3;
  }
  sums[0] = a0;
  sums[1] = a1;
  sums[2] = a2;
  sums[3] = a3;
  sums[4] = b0;
  sums[5] = b1;
  sums[6] = b2;
  sums[7] = b3;
}

/** Step 6.2: one threshold θ at sorted position int(numel·s) of the slab's scores; t ≤ θ is pruned. */
function slabMask(W: Float64Array, U: Float64Array, n: number, out: number, i1: number, count: number, s: number, mask: Uint8Array): void {
  const numel = count * out;
  const scores = new Float64Array(numel);
  for (let k = 0; k < count; k++) {
    const d = U[(i1 + k) * n + i1 + k]!;
    const d2 = d * d;
    const row = (i1 + k) * out;
    for (let o = 0; o < out; o++) {
      const v = W[row + o]!;
      scores[k * out + o] = (v * v) / d2;
    }
  }
  const theta = kthSmallest(scores.slice(), Math.min(numel - 1, Math.floor(numel * s)));
  for (let i = 0; i < numel; i++) if (scores[i]! <= theta) mask[i] = 1;
}

/** Step 6.3: in each output channel, the n smallest of the m inputs from c, as updated so far. */
function nmMask(W: Float64Array, U: Float64Array, n: number, out: number, c: number, k: number, pn: number, pm: number, mask: Uint8Array): void {
  const t = new Float64Array(pm);
  const order = Array.from({ length: pm }, (_, q) => q);
  for (let o = 0; o < out; o++) {
    for (let q = 0; q < pm; q++) {
      const d = U[(c + q) * n + c + q]!;
      const v = W[(c + q) * out + o]!;
      t[q] = (v * v) / (d * d);
    }
    order.sort((a, b) => t[a]! - t[b]! || a - b);
    for (let r = 0; r < pn; r++) mask[(k + order[r]!) * out + o] = 1;
  }
}

/**
 * U with H⁻¹ = UᵀU: L = chol(H) (lower), L⁻¹ by forward substitution, H⁻¹ = L⁻ᵀL⁻¹, then U is
 * the transpose of H⁻¹'s lower factor. `a` is consumed. Returned row-major [n, n], upper.
 */
export function upperCholeskyOfInverse(a: Float64Array, n: number, subject: string, alloc = plainFloat64): Float64Array {
  return factorInto(a, alloc(n * n), n, subject, SOLO, evenSplit(1), []);
}

/**
 * prepareHessian by a team of threads (solveTeam.ts), each member called with the same shared
 * `a` (working space) and `u` (where U is written), both n×n, and the same `split`: every member
 * returns the same PreparedHessian, with the bits of prepareHessian whatever the split, and the
 * milliseconds its own parts of the two triangular phases took (`phaseMs`, for the next split).
 * `kernel`: the member's Cholesky kernel, whose memory `a` is (choleskyKernelWasm.ts); every
 * member has one or none does.
 */
export function prepareHessianTeam(
  hessian: Float64Array, n: number, subject: string, percDamp: number,
  team: SolveTeam, a: Float64Array, u: Float64Array, split: TeamSplit, kernel: CholeskyKernel | null = null,
): PreparedHessian & { phaseMs: [number, number] } {
  if (hessian.length !== n * n) throw new InvalidArgumentError(subject, `Hessian has ${hessian.length} entries, the layer needs ${n}x${n}`);
  if (a.length !== n * n || u.length !== n * n) throw new InvalidArgumentError(subject, `a team's working space must hold ${n}x${n} entries`);
  // Every member finds the dead inputs and the dampening (O(n), in prepareHessian's order); each writes its rows.
  const dead = new Uint8Array(n);
  let diagSum = 0;
  for (let i = 0; i < n; i++) {
    const d = hessian[i * n + i]!;
    if (d === 0) dead[i] = 1;
    diagSum += d === 0 ? 1 : d;
  }
  const damp = percDamp * (diagSum / n);
  for (let i = team.rank; i < n; i += team.size) {
    a.set(hessian.subarray(i * n, i * n + n), i * n);
    a[i * n + i] = (dead[i] ? 1 : a[i * n + i]!) + damp;
  }
  team.sync();
  const phaseMs: [number, number] = [0, 0];
  return { hessian, u: factorInto(a, u, n, subject, team, split, phaseMs, kernel), dead, n, phaseMs };
}

/**
 * upperCholeskyOfInverse into `inv` (zeros, n×n), by every member of `team`: each phase splits
 * its entries among the members, each entry's operations those of one thread alone and in its
 * order, with a barrier wherever a member reads what another wrote.
 */
function factorInto(a: Float64Array, out: Float64Array, n: number, subject: string, team: SolveTeam, split: TeamSplit, phaseMs: number[], kernel: CholeskyKernel | null = null): Float64Array {
  const { rank, size } = team;
  choleskyLowerInPlace(a, n, subject, "the dampened Hessian", team, kernel);
  // L⁻¹ in the kernel's memory where it has room (the row additions then run on the kernel), else in `out`.
  const rowKernel = kernel?.inverse ? kernel : null;
  const inv = rowKernel?.inverse ?? out;
  let started = performance.now();
  // Rows of L⁻¹: row_i = (e_i − Σ_{k<i} L[i,k]·row_k) / L[i,i]. Two rows i and four rows k at a
  // time (addFourRows; x − l·y is x + (−l)·y exactly), each entry taking its terms in k order,
  // row i+1 its k = i term once row i is done. A column of L⁻¹ reads only its own column of the
  // earlier rows, so a member takes a range of columns [c0, c1) and waits for nobody.
  const columns = triangularBounds(n, split.inverse);
  const c0 = columns[rank]!;
  const c1 = columns[rank + 1]!;
  // Groups of four k below c0 reach no column of the range.
  const k0 = c0 - (c0 % 4);
  const finishRow = (i: number) => {
    const ri = i * n;
    const lii = a[ri + i]!;
    for (let j = c0, end = Math.min(i, c1); j < end; j++) inv[ri + j] = inv[ri + j]! / lii;
    if (i >= c0 && i < c1) inv[ri + i] = 1 / lii;
  };
  // Rows i and i+1 (unless !two) less the terms of rows k..k+3.
  const pairLessFour = (i: number, two: boolean, k: number) => {
    const ri = i * n;
    const ri1 = ri + n;
    const [l0, l1, l2, l3] = [a[ri + k]!, a[ri + k + 1]!, a[ri + k + 2]!, a[ri + k + 3]!];
    const [m0, m1, m2, m3] = two ? [a[ri1 + k]!, a[ri1 + k + 1]!, a[ri1 + k + 2]!, a[ri1 + k + 3]!] : [1, 1, 1, 1];
    if (l0 === 0 || l1 === 0 || l2 === 0 || l3 === 0 || m0 === 0 || m1 === 0 || m2 === 0 || m3 === 0) {
      for (let q = k; q < k + 4; q++) {
        subtractRow(inv, ri, q * n, a[ri + q]!, q, c0, c1);
        if (two) subtractRow(inv, ri1, q * n, a[ri1 + q]!, q, c0, c1);
      }
      return;
    }
    addFourRows(inv, inv, n, k, c0, c1, i, -l0, -l1, -l2, -l3, two ? i + 1 : -1, -m0, -m1, -m2, -m3, rowKernel);
  };
  if (rowKernel) {
    // Four rows i at a time, so that the kernel reads the earlier rows once for four (this phase
    // streams them from memory; with two it waited on memory): a group of four k whose sixteen
    // coefficients are not zero in one pass, else by pairs as below. Then the quad's own terms,
    // each row after the rows before it are done: each entry still takes its terms in k order.
    const coefficients = new Float64Array(16);
    for (let i = 0; i < n; i += 4) {
      const here = Math.min(4, n - i);
      for (let k = Math.min(k0, i); k + 3 < i; k += 4) {
        let zero = here < 4;
        for (let q = 0; q < 16 && !zero; q++) zero = (coefficients[q] = -a[(i + (q >> 2)) * n + k + (q & 3)]!) === 0;
        if (zero) for (let t = i; t < i + here; t += 2) pairLessFour(t, t + 1 < i + here, k);
        else addFourRowsToFour(inv, n, k, c0, c1, i, coefficients, rowKernel);
      }
      for (let t = i; t < i + here; t++) {
        for (let q = i; q < t; q++) subtractRow(inv, t * n, q * n, a[t * n + q]!, q, c0, c1);
        finishRow(t);
      }
    }
  }
  for (let i = 0; i < n && !rowKernel; i += 2) {
    const two = i + 1 < n;
    const ri = i * n;
    const ri1 = ri + n;
    let k = Math.min(k0, i - (i % 4));
    for (; k + 3 < i; k += 4) pairLessFour(i, two, k);
    for (; k < i; k++) {
      subtractRow(inv, ri, k * n, a[ri + k]!, k, c0, c1);
      if (two) subtractRow(inv, ri1, k * n, a[ri1 + k]!, k, c0, c1);
    }
    finishRow(i);
    if (!two) break;
    subtractRow(inv, ri1, ri, a[ri1 + i]!, i, c0, c1);
    finishRow(i + 1);
  }
  phaseMs[0] = performance.now() - started;
  team.sync();
  started = performance.now();
  // H⁻¹[i,j] = Σ_{k ≥ max(i,j)} L⁻¹[k,i]·L⁻¹[k,j], upper half accumulated, then mirrored. Four
  // rows k and two rows i at a time, each entry taking its terms in k order. A member takes a
  // range of rows [r0, r1) (whole pairs), which reads L⁻¹ only.
  const rows = triangularBounds(n, split.product, 2);
  const r0 = rows[rank]!;
  const r1 = rows[rank + 1]!;
  const hinv = a;
  hinv.fill(0, r0 * n, r1 * n);
  let k = 0;
  for (; k + 3 < n; k += 4) {
    const q0 = k * n;
    const q1 = q0 + n;
    const q2 = q1 + n;
    const q3 = q2 + n;
    const zeroIn = (i: number) => inv[q0 + i] === 0 || inv[q1 + i] === 0 || inv[q2 + i] === 0 || inv[q3 + i] === 0;
    for (let i = r0; i <= k && i < r1; i += 2) {
      const two = i + 1 <= k;
      const ri = i * n;
      if (zeroIn(i) || (two && zeroIn(i + 1))) {
        for (let t = i; t <= (two ? i + 1 : i); t++) for (let q = k; q < k + 4; q++) addRow(hinv, inv, t * n, q * n, inv[q * n + t]!, t, q);
        continue;
      }
      const [v0, v1, v2, v3] = [inv[q0 + i]!, inv[q1 + i]!, inv[q2 + i]!, inv[q3 + i]!];
      if (!two) {
        addFourRows(hinv, inv, n, k, i, n, i, v0, v1, v2, v3, -1, 0, 0, 0, 0, rowKernel);
        continue;
      }
      // Entry (i, i) first: row i+1 starts at j = i+1.
      hinv[ri + i] = hinv[ri + i]! + v0 * inv[q0 + i]! + v1 * inv[q1 + i]! + v2 * inv[q2 + i]! + v3 * inv[q3 + i]!;
      addFourRows(hinv, inv, n, k, i + 1, n, i, v0, v1, v2, v3, i + 1, inv[q0 + i + 1]!, inv[q1 + i + 1]!, inv[q2 + i + 1]!, inv[q3 + i + 1]!, rowKernel);
    }
    // Rows i past k: only the later rows k reach them.
    for (let i = Math.max(k + 1, r0); i <= k + 3 && i < r1; i++) for (let q = i; q < k + 4; q++) addRow(hinv, inv, i * n, q * n, inv[q * n + i]!, i, q);
  }
  for (; k < n; k++) for (let i = r0; i <= k && i < r1; i++) addRow(hinv, inv, i * n, k * n, inv[k * n + i]!, i, k);
  phaseMs[1] = performance.now() - started;
  team.sync();
  // The lower half from the upper, in tiles (a column read whole would miss the cache at every entry).
  transposeTiles(n, rank, size, (i, j) => (hinv[i * n + j] = hinv[j * n + i]!), true);
  team.sync();
  choleskyLowerInPlace(hinv, n, subject, "the inverse Hessian", team, kernel);
  // U = Lᵀ, into `out` (L⁻¹'s storage where it was there: nobody reads L⁻¹ any more).
  const u = out;
  for (let j = rank; j < n; j += size) u.fill(0, j * n, j * n + j);
  transposeTiles(n, rank, size, (i, j) => (u[j * n + i] = hinv[i * n + j]!), false);
  team.sync();
  return u;
}

/** Rows and columns of transposeTiles' tiles. */
const TILE = 32;

/**
 * copy(i, j) for every i > j (strict) or i >= j of an n×n matrix, in TILE×TILE tiles, member
 * `rank` of `size` taking the tile rows j0 of its turn: each entry once, whatever the team.
 */
function transposeTiles(n: number, rank: number, size: number, copy: (i: number, j: number) => void, strict: boolean): void {
  for (let j0 = rank * TILE; j0 < n; j0 += size * TILE) {
    const j1 = Math.min(n, j0 + TILE);
    for (let i0 = j0; i0 < n; i0 += TILE) {
      const i1 = Math.min(n, i0 + TILE);
      for (let j = j0; j < j1; j++) for (let i = Math.max(i0, strict ? j + 1 : j); i < i1; i++) copy(i, j);
    }
  }
}

/**
 * dst row t0 (and t1, unless negative) takes c_m·src row k+m (d_m for t1), m < 4, for every entry
 * j in [from, to) that source row k+m reaches (j ≤ k+m), added one after another in m order: the
 * four rows' terms as four row-at-a-time passes would add them, each entry read and written
 * once, the source loads shared by the two rows. `kernel`: where dst and src are its memory's
 * matrices, it does the bulk (the same bits).
 */
function addFourRows(
  dst: Float64Array, src: Float64Array, n: number, k: number, from: number, to: number,
  t0: number, c0: number, c1: number, c2: number, c3: number,
  t1: number, d0: number, d1: number, d2: number, d3: number,
  kernel: CholeskyKernel | null,
): void {
  const r0 = k * n;
  const r1 = r0 + n;
  const r2 = r1 + n;
  const r3 = r2 + n;
  const a = t0 * n;
  const b = t1 * n;
  const last = Math.min(k, to - 1);
  // The kernel takes pairs of entries (one call costs about what a few entries do), the loops below the rest.
  if (kernel && last - from >= 7) {
    const pairs = (last - from + 1) & ~1;
    kernel.addFour(dst, src, r0, from, pairs, a, c0, c1, c2, c3, t1 < 0 ? -1 : b, d0, d1, d2, d3);
    from += pairs;
  }
  if (t1 < 0) {
    for (let j = from; j <= last; j++) dst[a + j] = dst[a + j]! + c0 * src[r0 + j]! + c1 * src[r1 + j]! + c2 * src[r2 + j]! + c3 * src[r3 + j]!;
  } else {
    for (let j = from; j <= last; j++) {
      const s0 = src[r0 + j]!;
      const s1 = src[r1 + j]!;
      const s2 = src[r2 + j]!;
      const s3 = src[r3 + j]!;
      dst[a + j] = dst[a + j]! + c0 * s0 + c1 * s1 + c2 * s2 + c3 * s3;
      dst[b + j] = dst[b + j]! + d0 * s0 + d1 * s1 + d2 * s2 + d3 * s3;
    }
  }
  addTail(dst, src, n, k, from, to, a, c1, c2, c3);
  if (t1 >= 0) addTail(dst, src, n, k, from, to, b, d1, d2, d3);
}

/** addFourRows' entries k+1..k+3 of dst row offset t, which only the later source rows reach. */
function addTail(dst: Float64Array, src: Float64Array, n: number, k: number, from: number, to: number, t: number, e1: number, e2: number, e3: number): void {
  const r1 = (k + 1) * n;
  const r2 = r1 + n;
  const r3 = r2 + n;
  if (k + 1 >= from && k + 1 < to) dst[t + k + 1] = dst[t + k + 1]! + e1 * src[r1 + k + 1]! + e2 * src[r2 + k + 1]! + e3 * src[r3 + k + 1]!;
  if (k + 2 >= from && k + 2 < to) dst[t + k + 2] = dst[t + k + 2]! + e2 * src[r2 + k + 2]! + e3 * src[r3 + k + 2]!;
  if (k + 3 >= from && k + 3 < to) dst[t + k + 3] = dst[t + k + 3]! + e3 * src[r3 + k + 3]!;
}

/**
 * addFourRows into L⁻¹'s rows i..i+3 from its rows k..k+3 (k + 3 < i), row i+q's coefficients
 * c[4q..4q+3], on the kernel (whose memory inv is): each entry's terms in m order, as four
 * rows one at a time would add them.
 */
function addFourRowsToFour(inv: Float64Array, n: number, k: number, from: number, to: number, i: number, c: Float64Array, kernel: CholeskyKernel): void {
  const r0 = k * n;
  const last = Math.min(k, to - 1);
  if (last - from >= 7) {
    const pairs = (last - from + 1) & ~1;
    kernel.addFourToFour(inv, inv, r0, from, pairs, i * n, c);
    from += pairs;
  }
  for (let q = 0; q < 4; q++) {
    const t = (i + q) * n;
    const e1 = c[4 * q + 1]!;
    const e2 = c[4 * q + 2]!;
    const e3 = c[4 * q + 3]!;
    for (let j = from; j <= last; j++) inv[t + j] = inv[t + j]! + c[4 * q]! * inv[r0 + j]! + e1 * inv[r0 + n + j]! + e2 * inv[r0 + 2 * n + j]! + e3 * inv[r0 + 3 * n + j]!;
    addTail(inv, inv, n, k, from, to, t, e1, e2, e3);
  }
}

/** inv[ri + j] -= l·inv[rk + j] for j ≤ k in [from, to) (a row of L⁻¹ less l times an earlier one; none for l = 0). */
function subtractRow(inv: Float64Array, ri: number, rk: number, l: number, k: number, from: number, to: number): void {
  if (l === 0) return;
  for (let j = from, last = Math.min(k, to - 1); j <= last; j++) inv[ri + j]! -= l * inv[rk + j]!;
}

/** hinv[ri + j] += v·inv[rk + j] for i ≤ j ≤ k (none for v = 0). */
function addRow(hinv: Float64Array, inv: Float64Array, ri: number, rk: number, v: number, i: number, k: number): void {
  if (v === 0) return;
  for (let j = i; j <= k; j++) hinv[ri + j]! += v * inv[rk + j]!;
}

/**
 * Lower Cholesky factor in place (the upper half is left as zeros). Four columns j..j+3 at a
 * time, rows two at a time: eight chains sharing loads, each row entry read once for four
 * columns (the loop streams the matrix from memory: the fewer passes the better), each entry's
 * sum taken over k in order (the terms k = j..j+2 of the later columns last, once the earlier
 * columns are done), so the bits are one column's at a time. A team's members take turns at the
 * pairs of rows of each step, every member computing the step's 4×4 head itself, and wait for
 * each other between steps; the head is written once the step is done (nobody reads it in
 * between), so that no member writes what another may still read.
 */
function choleskyLowerInPlace(a: Float64Array, n: number, subject: string, what: string, team: SolveTeam, kernel: CholeskyKernel | null): void {
  const { rank, size } = team;
  // The step's head: head[4r + c] = L[j+r, j+c] (c < r), the pivot L[j+c, j+c] at 4c + c.
  const head = new Float64Array(16);
  // The last step's head entries, [index, value] each, written after the barrier.
  const pending: number[] = [];
  const writePending = () => {
    if (rank === 0) for (let p = 0; p < pending.length; p += 2) a[pending[p]!] = pending[p + 1]!;
    pending.length = 0;
  };
  for (let j = 0; j < n; j += 4) {
    writePending();
    const w = Math.min(4, n - j);
    for (let c = 0; c < w; c++) {
      const rc = (j + c) * n;
      for (let r = c; r < w; r++) {
        const rr = (j + r) * n;
        let v = a[rr + j + c]!;
        for (let k = 0; k < j; k++) v -= a[rr + k]! * a[rc + k]!;
        for (let t = 0; t < c; t++) v -= head[4 * r + t]! * head[4 * c + t]!;
        if (r === c) {
          if (!(v > 0)) throw new NumericError(subject, `${what} is not positive definite (pivot ${j + c} is ${v}); the calibration activations may be degenerate`);
          head[4 * c + c] = Math.sqrt(v);
        } else {
          head[4 * r + c] = v / head[4 * c + c]!;
        }
        pending.push(rr + j + c, head[4 * r + c]!);
      }
    }
    if (w < 4) break;
    const [d0, d1, d2, d3] = [head[0]!, head[5]!, head[10]!, head[15]!];
    const [l10, l20, l21, l30, l31, l32] = [head[4]!, head[8]!, head[9]!, head[12]!, head[13]!, head[14]!];
    // Row r's entries j..j+3 from their sums over k < j, then the terms k = j..j+2 in order.
    const finish = (r: number, p0: number, p1: number, p2: number, p3: number) => {
      const e0 = p0 / d0;
      const e1 = (p1 - e0 * l10) / d1;
      const e2 = (p2 - e0 * l20 - e1 * l21) / d2;
      a[r + j] = e0;
      a[r + j + 1] = e1;
      a[r + j + 2] = e2;
      a[r + j + 3] = (p3 - e0 * l30 - e1 * l31 - e2 * l32) / d3;
    };
    if (kernel) {
      // The sums over k < j by the kernel (in a[i][j..j+3]), then each row finished from them.
      // The kernel takes four rows at a time, so members take turns at groups of four (which
      // member computes a row does not change its bits).
      const first = j + 4 + CHOL_ROWS * rank;
      kernel.subtractHead(j, first, CHOL_ROWS * size);
      for (let i = first; i < n; i += CHOL_ROWS * size) {
        for (let r = i * n, last = Math.min(i + CHOL_ROWS, n) * n; r < last; r += n) finish(r, a[r + j]!, a[r + j + 1]!, a[r + j + 2]!, a[r + j + 3]!);
      }
      team.sync();
      continue;
    }
    const g0 = j * n;
    const g1 = g0 + n;
    const g2 = g1 + n;
    const g3 = g2 + n;
    let i = j + 4;
    let pair = 0;
    for (; i + 1 < n; i += 2, pair++) {
      if (pair % size !== rank) continue;
      const r0 = i * n;
      const r1 = r0 + n;
      let p0 = a[r0 + j]!;
      let p1 = a[r0 + j + 1]!;
      let p2 = a[r0 + j + 2]!;
      let p3 = a[r0 + j + 3]!;
      let q0 = a[r1 + j]!;
      let q1 = a[r1 + j + 1]!;
      let q2 = a[r1 + j + 2]!;
      let q3 = a[r1 + j + 3]!;
      for (let k = 0; k < j; k++) {
        const x = a[r0 + k]!;
        const y = a[r1 + k]!;
        const h0 = a[g0 + k]!;
        const h1 = a[g1 + k]!;
        const h2 = a[g2 + k]!;
        const h3 = a[g3 + k]!;
        p0 -= x * h0;
        p1 -= x * h1;
        p2 -= x * h2;
        p3 -= x * h3;
        q0 -= y * h0;
        q1 -= y * h1;
        q2 -= y * h2;
        q3 -= y * h3;
      }
      finish(r0, p0, p1, p2, p3);
      finish(r1, q0, q1, q2, q3);
    }
    // The last row alone, as one more pair.
    if (i < n && pair % size === rank) {
      const r0 = i * n;
      let p0 = a[r0 + j]!;
      let p1 = a[r0 + j + 1]!;
      let p2 = a[r0 + j + 2]!;
      let p3 = a[r0 + j + 3]!;
      for (let k = 0; k < j; k++) {
        const x = a[r0 + k]!;
        p0 -= x * a[g0 + k]!;
        p1 -= x * a[g1 + k]!;
        p2 -= x * a[g2 + k]!;
        p3 -= x * a[g3 + k]!;
      }
      finish(r0, p0, p1, p2, p3);
    }
    team.sync();
  }
  team.sync();
  writePending();
  for (let j = rank; j < n; j += size) a.fill(0, j * n + j + 1, (j + 1) * n);
  team.sync();
}

/** tr(BᵀHB) the scalar way: the bits gramQuadratic (gramKernelWasm.ts) also gives, faster. */
export function quadratic(h: Float64Array, b: Float64Array, n: number, out: number): number {
  // Rows i and i+1 at once: their dot products with the rows j after them (each summed over o in
  // order, eight chains sharing loads), then their terms added to the total in (i, j) order, as
  // one at a time would (terms with h = 0 left out).
  const dots = [new Float64Array(n), new Float64Array(n)] as const;
  const sums = new Float64Array(8);
  const rowDot = (x: number, y: number): number => {
    let d = 0;
    for (let o = 0; o < out; o++) d += b[x + o]! * b[y + o]!;
    return d;
  };
  let total = 0;
  for (let i = 0; i < n; i += 2) {
    const pair = i + 1 < n;
    const r0 = i * out;
    const r1 = r0 + out;
    dots[0][i] = rowDot(r0, r0);
    let j = i + 1;
    if (pair) {
      for (; j + 3 < n; j += 4) {
        dot2x4(b, r0, r1, b, j * out, out, out, sums);
        for (let t = 0; t < 4; t++) {
          dots[0][j + t] = sums[t]!;
          dots[1][j + t] = sums[4 + t]!;
        }
      }
    }
    for (; j < n; j++) {
      dots[0][j] = rowDot(r0, j * out);
      if (pair) dots[1][j] = rowDot(r1, j * out);
    }
    for (let q = 0; q < (pair ? 2 : 1); q++) {
      const row = i + q;
      const hi = row * n;
      const d = dots[q];
      for (let jj = row; jj < n; jj++) {
        const hij = h[hi + jj]!;
        if (hij !== 0) total += (row === jj ? 1 : 2) * hij * d[jj]!;
      }
    }
  }
  return total;
}

/** The weight as float64 in B[in, out] layout, whatever its storage type and layout. */
export function readWeights(w: WeightMatrix): Float64Array {
  const n = w.inDim * w.outDim;
  const vals = decode(w, n);
  if (w.layout === "in_out") return Float64Array.from(vals);
  const b = new Float64Array(n);
  for (let o = 0; o < w.outDim; o++) for (let c = 0; c < w.inDim; c++) b[c * w.outDim + o] = vals[o * w.inDim + c]!;
  return b;
}

function decode(w: WeightMatrix, n: number): Float32Array {
  if (w.dataType !== DT.FLOAT && w.dataType !== DT.FLOAT16 && w.dataType !== DT.BFLOAT16) {
    throw new InvalidArgumentError(w.name, `weights of type ${typeName(w.dataType)} cannot be pruned by SparseGPT (float32, float16 and bfloat16 can)`);
  }
  if (w.bytes.length !== n * (w.dataType === DT.FLOAT ? 4 : 2)) {
    throw new InvalidArgumentError(w.name, `${w.bytes.length} bytes do not hold a ${w.inDim}x${w.outDim} ${typeName(w.dataType)} weight`);
  }
  return toFloat32(w.bytes, w.dataType, w.name);
}

/**
 * Writes B back in the weight's own type and layout (float64 → float32 → storage type, as the
 * official `W.float()` … `.to(dtype)` does); pruned entries are +0.
 */
function writeWeights(w: WeightMatrix, b: Float64Array): void {
  const n = w.inDim * w.outDim;
  const at = (i: number): number => {
    if (w.layout === "in_out") return b[i]!;
    const o = Math.floor(i / w.inDim);
    return b[(i - o * w.inDim) * w.outDim + o]!;
  };
  const aligned = w.bytes.byteOffset % 4 === 0;
  const target = aligned ? w.bytes : new Uint8Array(w.bytes.length);
  if (w.dataType === DT.FLOAT) {
    const f = new Float32Array(target.buffer, target.byteOffset, n);
    for (let i = 0; i < n; i++) f[i] = at(i) + 0;
  } else {
    const u = new Uint16Array(target.buffer, target.byteOffset, n);
    const enc = w.dataType === DT.FLOAT16 ? floatToHalf : floatToBfloat16;
    for (let i = 0; i < n; i++) u[i] = enc(at(i) + 0);
  }
  if (!aligned) w.bytes.set(target);
}
