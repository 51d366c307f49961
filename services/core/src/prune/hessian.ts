/**
 * SparseGPT's Hessian of one linear's input (METHODS.md §1 step 2): H = (2/N) Σ_j A_jᵀA_j over
 * the pooled tokens of every sample, N the number of samples. Accumulated in float64: each
 * sample's own A_jᵀA_j first (tokens in order), then the samples' matrices added in sample order,
 * so replicas that each formed a share of the samples' matrices and exchanged them get the bits
 * of one process (pipeline/sampleExchange.ts). Linears that read the same activation (q/k/v,
 * gate/up) share one accumulator: the Hessian depends only on the input.
 */
import { halfToFloatTable } from "../onnx/dtype.js";
import { NumericError } from "../errors.js";
import type { WireTensor } from "../runtime/wireTensor.js";
import { gramRows } from "./gramKernelWasm.js";
import { runCopier, type RunCopy } from "./byteCopy.js";

/** Tokens whose rank-1 terms are added together (each entry still takes them in token order). */
const TOKENS_AT_ONCE = 4;

/**
 * Where no record is kept, a sample's P is formed this many bytes of rows at a time and added to
 * Σ before the next rows: Σ's in×in then stands alone, not beside a second in×in for P.
 */
const CHUNK_BYTES = 32 * 1024 * 1024;

export class HessianAccumulator {
  /**
   * Upper triangle (row-major, i <= j) of Σ_j A_jᵀA_j; the lower half is filled by finish().
   * In shared memory: finish() returns it as H, which solve threads then read where they are.
   */
  private readonly sum: Float64Array;
  /**
   * Upper triangle of the last sample's own A_jᵀA_j (its record), before it joined the sum; in
   * shared memory too, where solve threads add row ranges of it. Only where records are kept
   * (keepRecords: a replica that exchanges them); else P goes to Σ a chunk of rows at a time.
   */
  private sample: Float64Array | undefined;
  /** rows of P in formation, where no record is kept (made at the first sample) */
  private chunk: Float64Array | undefined;
  /** up to TOKENS_AT_ONCE pooled tokens' activations, as float64, row after row */
  private readonly rows: Float64Array;

  constructor(readonly tensor: string, readonly channels: number) {
    this.sum = new Float64Array(new SharedArrayBuffer(channels * channels * 8));
    this.rows = sampleRowsScratch(channels);
  }

  /**
   * Bytes this accumulator holds (for the shard planner's memory estimate): the sum, a chunk of
   * P's rows (or, with `records`, the sample's whole matrix) and a row; the other held rows (3n
   * float64) are left out, as the slab copies of the compression are.
   */
  static bytes(channels: number, records = false): number {
    return channels * channels * 8 + (records ? channels * channels : chunkRows(channels) * channels) * 8 + channels * 8;
  }

  /** From now on each sample's A_jᵀA_j is kept whole until the next, for record(). */
  keepRecords(): void {
    this.sample ??= new Float64Array(new SharedArrayBuffer(this.channels * this.channels * 8));
  }

  /** Float64 entries of one sample's record: the upper triangle of A_jᵀA_j, row by row. */
  static recordLength(channels: number): number {
    return (channels * (channels + 1)) / 2;
  }

  /**
   * Adds the pooled tokens of one sample's activation ([.., T, channels]): the sample's own
   * P[i,j] = Σ_t a_i·a_j, in token order (a term with a_i = 0 changes nothing), four tokens at a
   * time so each entry is read and written once per four terms (the matrix does not fit a cache)
   * with the same additions in the same order; then Σ += P. With `rowsOn` (a SolvePool), ranges
   * of rows i go to its threads, each entry still taking its terms in that order: a promise.
   */
  add(act: WireTensor, pool: Uint8Array, sampleSubject: string, rowsOn?: SampleRowsSolver): void | Promise<void> {
    const n = this.channels;
    const channels = act.dims[act.dims.length - 1]!;
    if (channels !== n) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${channels} channels, expected ${n}`);
    const tokens = act.data.length / n;
    if (tokens !== pool.length) throw new NumericError(`${this.tensor} (${sampleSubject})`, `activation has ${tokens} tokens, the sample ${pool.length}`);
    if (act.type !== "float32" && act.type !== "float16") throw new NumericError(this.tensor, `activations of type ${act.type} are not supported`);
    const src: SampleRows = { n, data: act.data as Float32Array | Uint16Array, half: act.type === "float16", pool };
    const bad = firstNonFinite(src);
    if (bad) throw new NumericError(`${this.tensor} (${sampleSubject})`, `NaN or Inf in the activations (token ${bad.token}, channel ${bad.channel})`);
    const split = rowsOn?.addSampleRows({ ...(this.sample ? { sample: this.sample } : {}), sum: this.sum }, src);
    if (split) return split;
    if (this.sample) addSampleRows(this.sample, this.sum, src, 0, n, this.rows);
    else addSampleRowsInChunks(this.sum, src, 0, n, this.rows, (this.chunk ??= chunkScratch(n)));
  }

  /** The last added sample's A_jᵀA_j (upper triangle, row by row): what a replica exchanges. */
  record(): Float64Array {
    if (!this.sample) throw new RangeError(`Hessian of ${this.tensor}: no record was kept (keepRecords() before the samples)`);
    return this.packed(this.sample);
  }

  /** Σ so far, packed as a record is: what a replica passes on in a chained reduction. */
  packedSum(): Float64Array {
    return this.packed(this.sum);
  }

  private packed(m: Float64Array): Float64Array {
    const n = this.channels;
    const out = new Float64Array(HessianAccumulator.recordLength(n));
    let k = 0;
    for (let i = 0; i < n; i++) {
      out.set(m.subarray(i * n + i, i * n + n), k);
      k += n - i;
    }
    return out;
  }

  /** Replaces the sum by every sample's record (index = sample) added in sample order. */
  reduce(records: readonly Float64Array[]): void {
    this.sum.fill(0);
    records.forEach((p, j) => this.addRecord(p, `sample ${j}'s Hessian record`));
  }

  /**
   * Replaces the sum by `prefix` (packedSum() of the samples before) with `records` added in
   * order: the bits of reduce() over all of them, since Σ starts at +0 and so never holds -0
   * (0 + prefix is prefix).
   */
  continueSum(prefix: Float64Array, records: readonly Float64Array[]): void {
    this.sum.fill(0);
    this.addRecord(prefix, "the sum before this replica's samples");
    records.forEach((p, j) => this.addRecord(p, `record ${j} after the sum`));
  }

  private addRecord(p: Float64Array, what: string): void {
    const n = this.channels;
    const length = HessianAccumulator.recordLength(n);
    if (p.length !== length) throw new NumericError(this.tensor, `${what} has ${p.length} entries, expected ${length}`);
    // Packed row i starts at i·n − i(i−1)/2; entry (i, j) is j − i further.
    this.addToSum(p, (i, c) => i * n - (i * (i - 1)) / 2 + (c - i));
  }

  /** Σ[i,j] += p[at(i, j)] over the upper triangle. */
  private addToSum(p: Float64Array, at: (i: number, j: number) => number): void {
    addToSum(this.sum, p, this.channels, 0, this.channels, at);
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

/** One sample's activation as stored ([T, n] float32, or float16 bits) and its pool: what row ranges read. */
export interface SampleRows {
  n: number;
  data: Float32Array | Uint16Array;
  half: boolean;
  pool: Uint8Array;
}

/** What adds a sample's rows on other threads (a SolvePool); undefined where it leaves them to this one. */
export interface SampleRowsSolver {
  addSampleRows(target: { sample?: Float64Array; sum: Float64Array }, src: SampleRows): Promise<void> | undefined;
}

/** The first pooled entry that is NaN or ±Inf, in token then channel order. */
function firstNonFinite({ n, data, half, pool }: SampleRows): { token: number; channel: number } | undefined {
  const table = half ? halfToFloatTable() : null;
  for (let t = 0; t < pool.length; t++) {
    if (!pool[t]) continue;
    const base = t * n;
    for (let c = 0; c < n; c++) {
      const v = table ? table[data[base + c]!]! : data[base + c]!;
      if (!Number.isFinite(v)) return { token: t, channel: c };
    }
  }
  return undefined;
}

/**
 * Rows [i0, i1) of one sample's P (`sample`, cleared first) over its pooled tokens, four at a
 * time in token order, then of Σ += P. i0 and i1 are even (or i1 = n): rows are taken in pairs,
 * so any such split does each entry's additions as the whole range does. `rows`: 4n scratch.
 * `sample` holds P's rows from row `origin` on (0: all of P; a chunk's first row otherwise).
 */
export function addSampleRows(sample: Float64Array, sum: Float64Array, src: SampleRows, i0: number, i1: number, rows: Float64Array, origin = 0): void {
  const { n } = src;
  const table = src.half ? halfToFloatTable() : null;
  sample.fill(0, (i0 - origin) * n, (i1 - origin) * n);
  if (!sampleRowsByKernel(sample, src, i0, i1, table, origin)) addHeldRows(sample, src, i0, i1, rows, table, origin);
  addToSum(sum, sample, n, i0, i1, (i, j) => (i - origin) * n + j);
}

/** Rows of P a chunk holds: CHUNK_BYTES of them, a multiple of 32 (the Gram kernel's), at least 32. */
export function chunkRows(n: number): number {
  const fit = Math.max(32, Math.floor(CHUNK_BYTES / (8 * Math.max(1, n)) / 32) * 32);
  return Math.min(fit, n + (n % 2));
}

/** Scratch for addSampleRowsInChunks. */
export function chunkScratch(n: number): Float64Array {
  return new Float64Array(chunkRows(n) * n);
}

/**
 * addSampleRows over [i0, i1) without P's whole matrix: a chunk of rows at a time in `scratch`
 * (chunkScratch), each added to Σ before the next. Chunks start at even rows, so every entry of
 * P and of Σ gets the additions of one whole range, in its order: the same bits.
 */
export function addSampleRowsInChunks(sum: Float64Array, src: SampleRows, i0: number, i1: number, rows: Float64Array, scratch: Float64Array): void {
  const step = scratch.length / src.n;
  for (let c0 = i0; c0 < i1; c0 += step) addSampleRows(scratch, sum, src, c0, Math.min(i1, c0 + step), rows, c0);
}

/**
 * P's rows [i0, i1) by the Gram kernel (gramKernelWasm.ts: each entry 0 plus its terms in token
 * order, as addHeldRows adds them), the pooled tokens as its rows; false where it cannot run.
 */
function sampleRowsByKernel(sample: Float64Array, src: SampleRows, i0: number, i1: number, table: Float32Array | null, origin: number): boolean {
  const { n, data, pool } = src;
  const tokens: number[] = [];
  pool.forEach((p, t) => {
    if (p) tokens.push(t);
  });
  const target = new Uint8Array(sample.buffer, sample.byteOffset, sample.byteLength);
  let copy: RunCopy | undefined;
  return gramRows(n, tokens.length, i0, i1, (bt, inP) => {
    tokens.forEach((t, q) => {
      const base = t * n;
      const at = q * inP;
      if (table) for (let c = 0; c < n; c++) bt[at + c] = table[data[base + c]!]!;
      else for (let c = 0; c < n; c++) bt[at + c] = data[base + c]!;
    });
  }, (i, dots, at) => {
    copy ??= runCopier(new Uint8Array(dots.buffer, 0, dots.buffer.byteLength), target);
    copy(dots.byteOffset + (at + i) * 8, ((i - origin) * n + i) * 8, (n - i) * 8);
  });
}

/** P's rows [i0, i1) the scalar way: TOKENS_AT_ONCE pooled tokens at a time, in token order. */
function addHeldRows(sample: Float64Array, src: SampleRows, i0: number, i1: number, rows: Float64Array, table: Float32Array | null, origin: number): void {
  const { n, data, pool } = src;
  let held = 0;
  for (let t = 0; t < pool.length; t++) {
    if (!pool[t]) continue;
    const base = t * n;
    const at = held * n;
    if (table) for (let c = 0; c < n; c++) rows[at + c] = table[data[base + c]!]!;
    else for (let c = 0; c < n; c++) rows[at + c] = data[base + c]!;
    if (++held === TOKENS_AT_ONCE) {
      addRows(sample, rows, n, held, i0, i1, origin);
      held = 0;
    }
  }
  addRows(sample, rows, n, held, i0, i1, origin);
}

/** Scratch for addSampleRows: TOKENS_AT_ONCE rows of n. */
export function sampleRowsScratch(n: number): Float64Array {
  return new Float64Array(TOKENS_AT_ONCE * n);
}

/** Σ[i,j] += p[at(i, j)] over rows [i0, i1) of the upper triangle. */
function addToSum(sum: Float64Array, p: Float64Array, n: number, i0: number, i1: number, at: (i: number, j: number) => number): void {
  for (let i = i0; i < i1; i++) {
    const from = at(i, i) - i;
    const off = i * n;
    for (let j = i; j < n; j++) sum[off + j] = sum[off + j]! + p[from + j]!;
  }
}

/** Adds the first `count` held rows' terms to rows [i0, i1) of P (held from row `origin`), row 0 first. */
function addRows(sum: Float64Array, rows: Float64Array, n: number, count: number, i0: number, i1: number, origin: number): void {
  if (count !== TOKENS_AT_ONCE) {
    for (let i = i0; i < i1; i++) for (let r = 0; r < count; r++) addRow(sum, rows, n, r, i, origin);
    return;
  }
  // Rows i and i+1 of the sum together (the held rows' loads shared), each entry taking the
  // four terms in token order. Terms with a_i = 0 are added here: the rows were checked finite,
  // so such a term is ±0, and adding ±0 changes no entry (a sum that starts at +0 never
  // becomes −0), as leaving it out does not.
  const [b1, b2, b3] = [n, 2 * n, 3 * n];
  let i = i0;
  for (; i + 1 < i1; i += 2) {
    const a0 = rows[i]!;
    const a1 = rows[b1 + i]!;
    const a2 = rows[b2 + i]!;
    const a3 = rows[b3 + i]!;
    const c0 = rows[i + 1]!;
    const c1 = rows[b1 + i + 1]!;
    const c2 = rows[b2 + i + 1]!;
    const c3 = rows[b3 + i + 1]!;
    const off = (i - origin) * n;
    const next = off + n;
    sum[off + i] = sum[off + i]! + a0 * a0 + a1 * rows[b1 + i]! + a2 * rows[b2 + i]! + a3 * rows[b3 + i]!;
    for (let j = i + 1; j < n; j++) {
      const s0 = rows[j]!;
      const s1 = rows[b1 + j]!;
      const s2 = rows[b2 + j]!;
      const s3 = rows[b3 + j]!;
      sum[off + j] = sum[off + j]! + a0 * s0 + a1 * s1 + a2 * s2 + a3 * s3;
      sum[next + j] = sum[next + j]! + c0 * s0 + c1 * s1 + c2 * s2 + c3 * s3;
    }
  }
  // Only the last row (i = n − 1, n odd) is left alone: its one entry is the diagonal.
  if (i < i1) sum[(i - origin) * n + i] = sum[(i - origin) * n + i]! + rows[i]! * rows[i]! + rows[b1 + i]! * rows[b1 + i]! + rows[b2 + i]! * rows[b2 + i]! + rows[b3 + i]! * rows[b3 + i]!;
}

/** Row i of held row r's term: Σ[i, j≥i] += a_i·a_j (nothing for a_i = 0). */
function addRow(sum: Float64Array, rows: Float64Array, n: number, r: number, i: number, origin: number): void {
  const at = r * n;
  const a = rows[at + i]!;
  if (a === 0) return;
  const off = (i - origin) * n;
  for (let j = i; j < n; j++) sum[off + j]! += a * rows[at + j]!;
}
