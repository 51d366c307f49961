/**
 * NumPy `.npy` files (format versions 1.0-3.0): the calibration set's `inputs_embeds` arrays.
 * Only little-endian float32 / float16 in C order are read; that is what LVLM embedding dumps are.
 * Position ids (int64, little-endian) have their own reader and writer.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync, writeFileSync } from "node:fs";
import { CalibrationError } from "../errors.js";

export type NpyDtype = "float32" | "float16";

export interface NpyArray {
  dtype: NpyDtype;
  shape: number[];
  /** float32 values, or float16 bit patterns. */
  data: Float32Array | Uint16Array;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

export function readNpy(path: string): NpyArray {
  return parseNpy(readNpyBytes(path), path);
}

function readNpyBytes(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new CalibrationError(path, `cannot read .npy file (${(err as Error).message})`, { cause: err });
  }
}

export interface NpyHeader {
  dtype: NpyDtype;
  shape: number[];
  /** where the data starts in the file */
  dataStart: number;
  /** bytes of data the shape needs */
  byteLength: number;
}

/**
 * Parses the header from the first bytes of a .npy file; `fileLength` (the whole file's size)
 * detects truncated data without reading it.
 */
export function parseNpyHeader(buf: Uint8Array, fileLength: number, subject: string): NpyHeader {
  return parseAnyHeader<NpyDtype>(buf, fileLength, subject, (descr) => {
    if (descr === "<f4" || descr === "=f4") return { dtype: "float32", itemSize: 4 };
    if (descr === "<f2" || descr === "=f2") return { dtype: "float16", itemSize: 2 };
    throw new CalibrationError(subject, `.npy dtype ${descr} is not supported (float32 or float16 little-endian)`);
  });
}

function parseAnyHeader<D extends string>(
  buf: Uint8Array, fileLength: number, subject: string, dtypeOf: (descr: string) => { dtype: D; itemSize: number },
): { dtype: D; shape: number[]; dataStart: number; byteLength: number } {
  if (buf.length < 10 || MAGIC.some((b, i) => buf[i] !== b)) {
    throw new CalibrationError(subject, "not a .npy file (bad magic bytes)");
  }
  const major = buf[6]!;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = major === 1 ? 10 : 12;
  const dataStart = headerStart + headerLen;
  if (dataStart > buf.length) throw new CalibrationError(subject, "truncated .npy header");
  const header = new TextDecoder().decode(buf.subarray(headerStart, dataStart));
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !fortran || shapeText === undefined) {
    throw new CalibrationError(subject, `unreadable .npy header ${JSON.stringify(header.trim())}`);
  }
  if (fortran === "True") throw new CalibrationError(subject, "Fortran-ordered .npy arrays are not supported; save with C order");
  const { dtype, itemSize } = dtypeOf(descr);
  const shape = shapeText.split(",").map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) throw new CalibrationError(subject, `bad .npy shape (${shapeText})`);
  const count = shape.reduce((a, b) => a * b, 1);
  const byteLength = count * itemSize;
  if (dataStart + byteLength > fileLength) {
    throw new CalibrationError(subject, `truncated .npy data: shape (${shape.join(", ")}) needs ${byteLength} bytes, file has ${fileLength - dataStart}`);
  }
  return { dtype, shape, dataStart, byteLength };
}

/** Only the header: dtype and shape, checked against the file's size (the data is not read). */
export function readNpyHeader(path: string): NpyHeader {
  let fd: number | undefined;
  try {
    fd = openSync(path, "r");
    const head = Buffer.alloc(Math.min(fstatSync(fd).size, 1 << 16));
    const n = readSync(fd, head, 0, head.length, 0);
    return parseNpyHeader(head.subarray(0, n), fstatSync(fd).size, path);
  } catch (err) {
    if (err instanceof CalibrationError) throw err;
    throw new CalibrationError(path, `cannot read .npy file (${(err as Error).message})`, { cause: err });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

export function parseNpy(buf: Uint8Array, subject: string): NpyArray {
  const { dtype, shape, dataStart, byteLength } = parseNpyHeader(buf, buf.length, subject);
  const count = byteLength / (dtype === "float32" ? 4 : 2);
  const bytes = buf.slice(dataStart, dataStart + byteLength);
  const data = dtype === "float32"
    ? new Float32Array(bytes.buffer, bytes.byteOffset, count)
    : new Uint16Array(bytes.buffer, bytes.byteOffset, count);
  return { dtype, shape, data };
}

/** An int64 array (position ids): little-endian `<i8`, C order. */
export interface NpyInt64Array { shape: number[]; data: BigInt64Array }

export function readNpyInt64(path: string): NpyInt64Array {
  const buf = readNpyBytes(path);
  const { shape, dataStart, byteLength } = parseAnyHeader<"int64">(buf, buf.length, path, (descr) => {
    if (descr === "<i8" || descr === "=i8") return { dtype: "int64", itemSize: 8 };
    throw new CalibrationError(path, `.npy dtype ${descr} is not supported for position ids (int64 little-endian, <i8)`);
  });
  const bytes = buf.slice(dataStart, dataStart + byteLength);
  return { shape, data: new BigInt64Array(bytes.buffer, bytes.byteOffset, byteLength / 8) };
}

export function writeNpyInt64(path: string, array: NpyInt64Array): void {
  writeFileSync(path, encodeWithDescr("<i8", array.shape, array.data));
}

export function encodeNpy(array: NpyArray): Uint8Array {
  return encodeWithDescr(array.dtype === "float32" ? "<f4" : "<f2", array.shape, array.data);
}

function encodeWithDescr(descr: string, shapeDims: number[], data: ArrayBufferView): Uint8Array {
  const array = { shape: shapeDims, data };
  const shape = array.shape.length === 1 ? `(${array.shape[0]},)` : `(${array.shape.join(", ")})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  // Pad so that the data starts on a 64-byte boundary, as numpy does.
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - (total % 64)) % 64) + "\n";
  const head = new Uint8Array(10 + header.length);
  head.set(MAGIC, 0);
  head[6] = 1;
  head[7] = 0;
  new DataView(head.buffer).setUint16(8, header.length, true);
  head.set(new TextEncoder().encode(header), 10);
  const body = new Uint8Array(array.data.buffer, array.data.byteOffset, array.data.byteLength);
  const out = new Uint8Array(head.length + body.length);
  out.set(head, 0);
  out.set(body, head.length);
  return out;
}

export function writeNpy(path: string, array: NpyArray): void {
  writeFileSync(path, encodeNpy(array));
}
