/**
 * SparseGPT and its Hessian accumulator as they were before the hot loops were blocked (commit bc6b4ad),
 * kept verbatim as a reference the faster code must match bit for bit.
 */
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
import { InvalidArgumentError, NumericError } from "../../services/core/src/errors.js";
import type { WireTensor } from "../../services/core/src/runtime/wireTensor.js";
import { OnnxDataType as DT, floatToBfloat16, floatToHalf, halfToFloatTable, toFloat32, typeName } from "../../services/core/src/onnx/dtype.js";
import type { Pattern, WeightMatrix } from "../../services/core/src/prune/maskSelect.js";

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

/**
 * Steps 3-5: dead inputs, dampening relative to the mean of the diagonal (after the dead fix),
 * and U. Throws NumericError naming `subject` when H is not positive definite after dampening.
 */
export function prepareHessian(hessian: Float64Array, n: number, subject: string, percDamp = SPARSEGPT_PERCDAMP): PreparedHessian {
  if (hessian.length !== n * n) throw new InvalidArgumentError(subject, `Hessian has ${hessian.length} entries, the layer needs ${n}x${n}`);
  const a = hessian.slice();
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
  return { hessian, u: upperCholeskyOfInverse(a, n, subject), dead, n };
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
  const n = w.inDim;
  const out = w.outDim;
  const blockSize = opts.blockSize ?? SPARSEGPT_BLOCK_SIZE;
  const s = opts.sparsity;
  if (!(s >= 0 && s < 1)) throw new InvalidArgumentError("sparsity", `must be in [0, 1), got ${s}`);
  if (prepared.n !== n) throw new InvalidArgumentError(w.name, `Hessian is ${prepared.n}x${prepared.n}, the layer has ${n} inputs`);
  if (opts.pattern.kind === "nm" && (n % opts.pattern.m !== 0 || blockSize % opts.pattern.m !== 0)) {
    throw new InvalidArgumentError(w.name, `input dimension ${n} is not a multiple of M=${opts.pattern.m} for the ${opts.pattern.n}:${opts.pattern.m} pattern`);
  }
  const original = readWeights(w);
  const { weights: W, pruned } = obsUpdate(original, prepared, opts, out);
  writeWeights(w, W);
  const written = readWeights(w);
  return { pruned, total: n * out, relativeError: relativeError(prepared.hessian, original, written, n, out) };
}

/**
 * Step 6 on the weights as float64 B[in, out] (`original` is not modified): the updated weights,
 * pruned entries exact zeros, and how many were pruned.
 */
export function obsUpdate(original: Float64Array, prepared: PreparedHessian, opts: SparseGptOptions, out: number): { weights: Float64Array; pruned: number } {
  const n = prepared.n;
  const blockSize = opts.blockSize ?? SPARSEGPT_BLOCK_SIZE;
  const s = opts.sparsity;
  const W = original.slice();
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
    const E = new Float64Array(count * out);
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
    // Lazy update: W[:, i2:] -= E1·U[i1:i2, i2:], each entry's sum formed before it is subtracted.
    for (let cc = i2; cc < n; cc++) {
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
  }

  return { weights: W, pruned };
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
  const sorted = scores.slice().sort();
  const theta = sorted[Math.min(numel - 1, Math.floor(numel * s))]!;
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
export function upperCholeskyOfInverse(a: Float64Array, n: number, subject: string): Float64Array {
  choleskyLowerInPlace(a, n, subject, "the dampened Hessian");
  // Rows of L⁻¹: row_i = (e_i − Σ_{k<i} L[i,k]·row_k) / L[i,i].
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let k = 0; k < i; k++) {
      const l = a[ri + k]!;
      if (l === 0) continue;
      const rk = k * n;
      for (let j = 0; j <= k; j++) inv[ri + j]! -= l * inv[rk + j]!;
    }
    const lii = a[ri + i]!;
    for (let j = 0; j < i; j++) inv[ri + j] = inv[ri + j]! / lii;
    inv[ri + i] = 1 / lii;
  }
  // H⁻¹[i,j] = Σ_{k ≥ max(i,j)} L⁻¹[k,i]·L⁻¹[k,j], upper half accumulated, then mirrored.
  const hinv = a.fill(0);
  for (let k = 0; k < n; k++) {
    const rk = k * n;
    for (let i = 0; i <= k; i++) {
      const v = inv[rk + i]!;
      if (v === 0) continue;
      const ri = i * n;
      for (let j = i; j <= k; j++) hinv[ri + j]! += v * inv[rk + j]!;
    }
  }
  for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) hinv[j * n + i] = hinv[i * n + j]!;
  choleskyLowerInPlace(hinv, n, subject, "the inverse Hessian");
  // U = Lᵀ, reusing inv's storage.
  const u = inv.fill(0);
  for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) u[j * n + i] = hinv[i * n + j]!;
  return u;
}

/** Lower Cholesky factor in place (the upper half is left as zeros). */
function choleskyLowerInPlace(a: Float64Array, n: number, subject: string, what: string): void {
  for (let j = 0; j < n; j++) {
    const rj = j * n;
    let d = a[rj + j]!;
    for (let k = 0; k < j; k++) d -= a[rj + k]! * a[rj + k]!;
    if (!(d > 0)) throw new NumericError(subject, `${what} is not positive definite (pivot ${j} is ${d}); the calibration activations may be degenerate`);
    const ljj = Math.sqrt(d);
    a[rj + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      const ri = i * n;
      let v = a[ri + j]!;
      for (let k = 0; k < j; k++) v -= a[ri + k]! * a[rj + k]!;
      a[ri + j] = v / ljj;
    }
    for (let k = j + 1; k < n; k++) a[rj + k] = 0;
  }
}

/** tr(ΔBᵀHΔB) / tr(BᵀHB): the output error the calibration tokens see, relative to the output. */
function relativeError(h: Float64Array, before: Float64Array, after: Float64Array, n: number, out: number): number {
  const delta = new Float64Array(before.length);
  for (let i = 0; i < delta.length; i++) delta[i] = after[i]! - before[i]!;
  const num = quadratic(h, delta, n, out);
  const den = quadratic(h, before, n, out);
  return den > 0 ? num / den : 0;
}

function quadratic(h: Float64Array, b: Float64Array, n: number, out: number): number {
  let total = 0;
  for (let i = 0; i < n; i++) {
    const ri = i * out;
    for (let j = i; j < n; j++) {
      const hij = h[i * n + j]!;
      if (hij === 0) continue;
      const rj = j * out;
      let dot = 0;
      for (let o = 0; o < out; o++) dot += b[ri + o]! * b[rj + o]!;
      total += (i === j ? 1 : 2) * hij * dot;
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

// ---- prune/hessian.ts ----
/**
 * SparseGPT's Hessian of one linear's input (METHODS.md §1 step 2): H = (2/N) Σ_j A_jᵀA_j over
 * the pooled tokens of every sample, N the number of samples. Accumulated in float64, samples in
 * order, tokens in order, so every mode of the system gets the same bits. Linears that read the
 * same activation (q/k/v, gate/up) share one accumulator: the Hessian depends only on the input.
 */

// Since issue 10 each sample's own AᵀA is formed first (tokens in order) and then added to the
// sum, samples in order, so that replicas can exchange it: the loop below is the unblocked one,
// with that order.
export class HessianAccumulator {
  /** Upper triangle (row-major, i <= j) of Σ AᵀA; the lower half is filled by finish(). */
  private readonly sum: Float64Array;
  private readonly row: Float64Array;

  constructor(readonly tensor: string, readonly channels: number) {
    this.sum = new Float64Array(channels * channels);
    this.row = new Float64Array(channels);
  }

  /** Bytes this accumulator holds (for the shard planner's memory estimate). */
  static bytes(channels: number): number {
    return channels * channels * 8 + channels * 8;
  }

  /** Adds the pooled tokens of one sample's activation ([.., T, channels]). */
  add(act: WireTensor, pool: Uint8Array, sampleSubject: string): void {
    const n = this.channels;
    const channels = act.dims[act.dims.length - 1]!;
    if (channels !== n) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${channels} channels, expected ${n}`);
    const tokens = act.data.length / n;
    if (tokens !== pool.length) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${tokens} tokens, the sample ${pool.length}`);
    if (act.type !== "float32" && act.type !== "float16") throw new NumericError(this.tensor, `activations of type ${act.type} are not supported`);
    const table = act.type === "float16" ? halfToFloatTable() : null;
    const row = this.row;
    const sum = new Float64Array(n * n);
    for (let t = 0; t < tokens; t++) {
      if (!pool[t]) continue;
      const base = t * n;
      if (table) for (let c = 0; c < n; c++) row[c] = table[(act.data as Uint16Array)[base + c]!]!;
      else for (let c = 0; c < n; c++) row[c] = (act.data as Float32Array)[base + c]!;
      for (let i = 0; i < n; i++) {
        const a = row[i]!;
        if (!Number.isFinite(a)) throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (token ${t}, channel ${i})`);
        if (a === 0) continue;
        const off = i * n;
        for (let j = i; j < n; j++) sum[off + j]! += a * row[j]!;
      }
    }
    for (let i = 0; i < n; i++) for (let j = i; j < n; j++) this.sum[i * n + j]! += sum[i * n + j]!;
  }

  /** H = (2/N)·Σ, full symmetric, row-major [in, in]. The accumulator must not be used after. */
  finish(samples: number): Float64Array {
    const n = this.channels;
    const h = this.sum;
    const scale = 2 / samples;
    for (let i = 0; i < n; i++) {
      for (let j = i; j < n; j++) {
        const v = h[i * n + j]! * scale;
        h[i * n + j] = v;
        h[j * n + i] = v;
      }
    }
    return h;
  }
}
