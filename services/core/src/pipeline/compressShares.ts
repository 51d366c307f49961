/**
 * The compress step shared out between the replicas of a stage: each replica compresses its
 * share of a block's linears (masks selected, SparseGPT's solves) and the replicas exchange the
 * results, so that a stage of R replicas compresses a block about R times faster instead of R
 * times over. Every linear's compression depends only on its dense weight and its reduced
 * statistics, which every replica holds bit for bit, so who computes it changes no bits.
 *
 * Results travel as records of the sample exchange (SampleExchange with ItemShares): a mask as
 * one bit per entry (a byte per entry in memory), new weights as their bytes.
 */
import { GraphError } from "../errors.js";
import type { Compression } from "../methods/method.js";
import type { LinearInfo } from "../graph/linears.js";
import type { ItemShares, SampleRecord } from "./sampleExchange.js";

/** Which replica compresses which linear, as the exchange's items. */
export interface CompressShares extends ItemShares {
  /** order[i]: the linear (index into the group's linears) that is item i; replica r's items are contiguous */
  readonly order: readonly number[];
}

/**
 * Linears to replicas, longest first to the least loaded (ties: the lower index), by `cost`;
 * undefined when there are fewer linears than replicas (every replica then compresses all of
 * them, as one process does). The same inputs give the same shares at every replica.
 */
export function compressShares(costs: readonly number[], replicas: number): CompressShares | undefined {
  if (replicas < 2 || costs.length < replicas) return undefined;
  const byCost = costs.map((_, i) => i).sort((a, b) => costs[b]! - costs[a]! || a - b);
  const load = new Array<number>(replicas).fill(0);
  const owner = new Array<number>(costs.length);
  for (const i of byCost) {
    let r = 0;
    for (let q = 1; q < replicas; q++) if (load[q]! < load[r]!) r = q;
    owner[i] = r;
    load[r]! += costs[i]!;
  }
  const order = costs.map((_, i) => i).sort((a, b) => owner[a]! - owner[b]! || a - b);
  const bounds = [0];
  for (let r = 0; r < replicas; r++) bounds.push(bounds[r]! + owner.filter((o) => o === r).length);
  return { order, bounds };
}

/** The most cost one replica carries under compressShares (every linear's, where they are not shared out). */
export function compressMakespan(costs: readonly number[], replicas: number): number {
  const shares = compressShares(costs, replicas);
  if (shares === undefined) return costs.reduce((a, c) => a + c, 0);
  let most = 0;
  for (let r = 0; r + 1 < shares.bounds.length; r++) {
    let load = 0;
    for (let i = shares.bounds[r]!; i < shares.bounds[r + 1]!; i++) load += costs[shares.order[i]!]!;
    most = Math.max(most, load);
  }
  return most;
}

const KIND = { mask: 0, weights: 1 } as const;

/** A compression as an exchange record: [kind, pruned, entries or bytes], fact values, fact names (JSON), payload. */
export function compressionRecord(c: Compression): SampleRecord {
  const facts = Object.entries(c.facts ?? {});
  const names = new TextEncoder().encode(JSON.stringify(facts.map(([k]) => k)));
  const payload = c.kind === "mask" ? packMaskBits(c.mask) : c.bytes;
  const length = c.kind === "mask" ? c.mask.length : c.bytes.length;
  return [Float64Array.of(KIND[c.kind], c.pruned, length), Float64Array.from(facts.map(([, v]) => v)), padded(names), padded(payload)];
}

/**
 * A compression back from its record, checked against the linear it belongs to (`elementBytes`
 * per entry for new weights). `into` gives a mask buffer of n bytes when one is free.
 */
export function compressionFromRecord(record: SampleRecord, linear: LinearInfo, elementBytes: number, into?: (n: number) => Uint8Array | undefined): Compression {
  const fail = (why: string): never => {
    throw new GraphError(linear.weight, `the exchanged compression ${why}`);
  };
  if (record.length !== 4) fail(`has ${record.length} parts, not 4`);
  const [head, values, names, payload] = record as [Float64Array, Float64Array, Float64Array, Float64Array];
  if (head.length !== 3) fail(`header has ${head.length} numbers, not 3`);
  const [kind, pruned, length] = [head[0]!, head[1]!, head[2]!];
  const entries = linear.inDim * linear.outDim;
  const parsed = JSON.parse(new TextDecoder().decode(bytesOf(names)).replace(/\0+$/, "")) as unknown;
  const keys = Array.isArray(parsed) && parsed.every((k) => typeof k === "string") ? (parsed as string[]) : fail("has fact names that are not a list of names");
  if (keys.length !== values.length) fail(`has ${keys.length} fact names for ${values.length} values`);
  const facts = keys.length > 0 ? Object.fromEntries(keys.map((k, i) => [k, values[i]!])) : undefined;
  const bytes = bytesOf(payload);
  if (kind === KIND.mask) {
    if (length !== entries || bytes.length < Math.ceil(entries / 8)) fail(`is a mask of ${length} entries for ${entries}`);
    return { kind: "mask", mask: unpackMaskBits(bytes, entries, into?.(entries)), pruned, ...(facts ? { facts } : {}) };
  }
  if (kind !== KIND.weights) fail(`is of kind ${kind}`);
  if (length !== entries * elementBytes || bytes.length < length) fail(`holds ${length} bytes for ${entries} entries of ${elementBytes} bytes`);
  return { kind: "weights", bytes: bytes.subarray(0, length), pruned, ...(facts ? { facts } : {}) };
}

function bytesOf(v: Float64Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** `bytes` copied into float64 storage (zeros after them): records hold float64 vectors. */
function padded(bytes: Uint8Array): Float64Array {
  const v = new Float64Array(Math.ceil(bytes.length / 8));
  bytesOf(v).set(bytes);
  return v;
}

/** Bit i (of byte i >> 3, from the low bit) is set when mask entry i is non-zero (applyMask's rule). */
export function packMaskBits(mask: Uint8Array): Uint8Array {
  const n = mask.length;
  const out = new Uint8Array(Math.ceil(n / 8));
  let done = 0;
  if (mask.byteOffset % 4 === 0 && LITTLE_ENDIAN) {
    // Eight entries (two words) a step: a byte's high bit is set by ((w & 0x7f) + 0x7f) | w when it is non-zero.
    const words = new Uint32Array(mask.buffer, mask.byteOffset, (n >>> 3) * 2);
    for (let k = 0; k < words.length; k += 2) {
      out[k >>> 1] = nibble(words[k]!) | (nibble(words[k + 1]!) << 4);
    }
    done = words.length * 4;
  }
  for (let i = done; i < n; i++) if (mask[i] !== 0) out[i >>> 3]! |= 1 << (i & 7);
  return out;
}

function nibble(w: number): number {
  const high = (((w & 0x7f7f7f7f) + 0x7f7f7f7f) | w) & 0x80808080;
  return ((high >>> 7) & 1) | ((high >>> 14) & 2) | ((high >>> 21) & 4) | ((high >>> 28) & 8);
}

/** The n mask bytes (0 or 1) of packed bits, into `into` when given. */
export function unpackMaskBits(bits: Uint8Array, n: number, into?: Uint8Array): Uint8Array {
  const out = into ?? new Uint8Array(n);
  if (out.length !== n) throw new RangeError(`a mask buffer of ${out.length} bytes for ${n} entries`);
  let done = 0;
  if (out.byteOffset % 4 === 0 && LITTLE_ENDIAN) {
    const words = new Uint32Array(out.buffer, out.byteOffset, (n >>> 3) * 2);
    const table = spreadTable();
    for (let k = 0; k < words.length; k += 2) {
      const b = bits[k >>> 1]!;
      words[k] = table[b & 15]!;
      words[k + 1] = table[b >>> 4]!;
    }
    done = words.length * 4;
  }
  for (let i = done; i < n; i++) out[i] = (bits[i >>> 3]! >>> (i & 7)) & 1;
  return out;
}

/** For each 4-bit value, the little-endian word of its four bits as bytes 0 or 1. */
function spreadTable(): Uint32Array {
  const t = new Uint32Array(16);
  for (let v = 0; v < 16; v++) t[v] = (v & 1) | ((v >>> 1) & 1) << 8 | ((v >>> 2) & 1) << 16 | ((v >>> 3) & 1) << 24;
  return t;
}

const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
