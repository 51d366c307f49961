/**
 * ONNX element types the engine handles, their byte sizes, onnxruntime type names, and the
 * float16 / bfloat16 <-> float32 conversions used to read weights for the metric.
 */
import { TensorProto_DataType as DT } from "../../../gen/onnx_pb.js";
import { UnsupportedTypeError } from "../errors.js";

export { DT as OnnxDataType };

/** Weight types the metric can read (and write back in the same type). */
export const FLOAT_WEIGHT_TYPES: ReadonlySet<number> = new Set([DT.FLOAT, DT.FLOAT16, DT.BFLOAT16]);

const SIZES: Record<number, number> = {
  [DT.FLOAT]: 4, [DT.UINT8]: 1, [DT.INT8]: 1, [DT.UINT16]: 2, [DT.INT16]: 2, [DT.INT32]: 4,
  [DT.INT64]: 8, [DT.BOOL]: 1, [DT.FLOAT16]: 2, [DT.DOUBLE]: 8, [DT.UINT32]: 4, [DT.UINT64]: 8,
  [DT.BFLOAT16]: 2,
};

export function elementSize(dataType: number, subject: string): number {
  const size = SIZES[dataType];
  if (size === undefined) {
    throw new UnsupportedTypeError(subject, `element type ${typeName(dataType)} is not supported`);
  }
  return size;
}

export function typeName(dataType: number): string {
  return DT[dataType] ?? `#${dataType}`;
}

/** onnxruntime-node tensor type names. */
export type OrtType = "float32" | "float16" | "int64" | "int32" | "bool" | "uint8" | "int8" | "float64";

const ORT_TYPES: Record<number, OrtType> = {
  [DT.FLOAT]: "float32", [DT.FLOAT16]: "float16", [DT.INT64]: "int64", [DT.INT32]: "int32",
  [DT.BOOL]: "bool", [DT.UINT8]: "uint8", [DT.INT8]: "int8", [DT.DOUBLE]: "float64",
};

export function ortType(dataType: number, subject: string): OrtType {
  const t = ORT_TYPES[dataType];
  if (t === undefined) {
    throw new UnsupportedTypeError(subject, `element type ${typeName(dataType)} cannot be fed to onnxruntime here`);
  }
  return t;
}

// float16 -> float32 by table: 65536 entries make the hot loops a single indexed load.
let halfTable: Float32Array | undefined;

/** Table of float32 values of every float16 bit pattern (built once, read-only after). */
export function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = decodeHalf(h);
  halfTable = table;
  return table;
}

function decodeHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> float16 bits, round to nearest even (used only to build test data and inputs). */
export function floatToHalf(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half++;
  return sign | half;
}

/** bfloat16 bits -> float32 value. */
export function bfloat16ToFloat(b: number): number {
  u32[0] = b << 16;
  return f32[0]!;
}

/** float32 -> bfloat16 bits, round to nearest even. */
export function floatToBfloat16(value: number): number {
  f32[0] = value;
  const x = u32[0]!;
  if ((x & 0x7f800000) === 0x7f800000 && x & 0x7fffff) return (x >>> 16) | 0x40;
  const rounded = x + 0x7fff + ((x >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/**
 * Reads a weight's raw little-endian bytes as float32 values, whatever its stored type.
 */
export function toFloat32(bytes: Uint8Array, dataType: number, subject: string): Float32Array {
  const n = bytes.byteLength / elementSize(dataType, subject);
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : Uint8Array.prototype.slice.call(bytes);
  if (dataType === DT.FLOAT) return new Float32Array(aligned.buffer, aligned.byteOffset, n).slice();
  if (dataType === DT.FLOAT16 || dataType === DT.BFLOAT16) {
    const src = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
    const out = new Float32Array(n);
    if (dataType === DT.FLOAT16) {
      const table = halfToFloatTable();
      for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
    } else {
      const outBits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) outBits[i] = src[i]! << 16;
    }
    return out;
  }
  throw new UnsupportedTypeError(subject, `weights of type ${typeName(dataType)} cannot be pruned (float32, float16 and bfloat16 can)`);
}
