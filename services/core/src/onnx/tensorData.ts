/**
 * The bytes of a model's tensors, wherever the producer put them: raw_data, the typed repeated
 * fields, or a byte range of an external-data file.
 *
 * External weights are read by positional reads of just their range on a cached file handle:
 * a worker only ever touches the blocks it prunes, and a model larger than memory stays on disk.
 */
import { open, type FileHandle } from "node:fs/promises";
import { isAbsolute, relative, resolve, sep } from "node:path";
import {
  TensorProto_DataLocation,
  TensorProto_DataType as DT,
  type AttributeProto,
  type GraphProto,
  type ModelProto,
  type TensorProto,
} from "../../../gen/onnx_pb.js";
import { ExternalDataError, OnnxFormatError } from "../errors.js";
import { elementSize, typeName } from "./dtype.js";
import type { LoadedModel } from "./modelFile.js";

/** Where an external tensor's bytes are. */
export interface ExternalRange {
  /** The `location` entry as written in the model. */
  location: string;
  /** Absolute path of the data file. */
  file: string;
  offset: number;
  length: number;
}

interface OpenFile {
  handle: FileHandle;
  size: number;
}

export function isExternal(t: TensorProto): boolean {
  return t.dataLocation === TensorProto_DataLocation.EXTERNAL;
}

export function tensorSubject(t: TensorProto): string {
  return `tensor "${t.name}"`;
}

/**
 * Every TensorProto of a model in a fixed order: main-graph initializers first (in order), then
 * sparse initializers, tensors in node attributes and nested graphs, functions and training info.
 * Writers walk a model and its clone with it to pair tensors up, so the order must not depend
 * on anything but the model's structure.
 */
export function allTensors(model: ModelProto): TensorProto[] {
  const out: TensorProto[] = [];
  if (model.graph) walkGraph(model.graph, out);
  for (const f of model.functions) for (const n of f.node) for (const a of n.attribute) walkAttribute(a, out);
  for (const ti of model.trainingInfo) {
    if (ti.initialization) walkGraph(ti.initialization, out);
    if (ti.algorithm) walkGraph(ti.algorithm, out);
  }
  return out;
}

function walkGraph(g: GraphProto, out: TensorProto[]): void {
  out.push(...g.initializer);
  for (const s of g.sparseInitializer) {
    if (s.values) out.push(s.values);
    if (s.indices) out.push(s.indices);
  }
  for (const n of g.node) for (const a of n.attribute) walkAttribute(a, out);
}

function walkAttribute(a: AttributeProto, out: TensorProto[]): void {
  if (a.t) out.push(a.t);
  out.push(...a.tensors);
  for (const s of [...(a.sparseTensor ? [a.sparseTensor] : []), ...a.sparseTensors]) {
    if (s.values) out.push(s.values);
    if (s.indices) out.push(s.indices);
  }
  if (a.g) walkGraph(a.g, out);
  for (const g of a.graphs) walkGraph(g, out);
}

export class TensorData {
  readonly modelPath: string;
  readonly dir: string;
  private readonly model: ModelProto;
  // Promises, not handles, so concurrent first reads of one file share a single open().
  private readonly files = new Map<string, Promise<OpenFile>>();

  constructor(src: LoadedModel) {
    this.modelPath = src.path;
    this.dir = src.dir;
    this.model = src.model;
  }

  /** product(dims) * element size; throws UnsupportedTypeError for STRING, FLOAT8, INT4, ... */
  byteLength(t: TensorProto): number {
    const size = elementSize(t.dataType, `${tensorSubject(t)} in ${this.modelPath}`);
    return elementCount(t, this.modelPath) * size;
  }

  isExternal(t: TensorProto): boolean {
    return isExternal(t);
  }

  /**
   * The data file and byte range of an external tensor (undefined for inline ones). Checks the
   * entries themselves (location inside the model folder, integer offset and length, length
   * matching the shape) but not the file; `validate` and `read` do that.
   */
  externalRange(t: TensorProto): ExternalRange | undefined {
    if (!isExternal(t)) return undefined;
    const subject = tensorSubject(t);
    const entries = new Map(t.externalData.map((e) => [e.key, e.value]));
    const location = entries.get("location");
    if (!location) {
      throw new ExternalDataError(subject, `is marked external in ${this.modelPath} but has no "location" entry; re-export the model`);
    }
    if (isAbsolute(location) || /^[a-zA-Z]:[\\/]/.test(location)) {
      throw new ExternalDataError(
        subject,
        `external data location "${location}" is an absolute path; ONNX locations are relative to the model folder ${this.dir} — move the data file next to the model`,
      );
    }
    const file = resolve(this.dir, location);
    const rel = relative(this.dir, file);
    if (rel === "" || rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
      throw new ExternalDataError(
        subject,
        `external data location "${location}" points outside the model folder ${this.dir}; refusing to read it — move the data file next to the model`,
      );
    }
    const offset = parseSize(entries.get("offset"), 0, subject, "offset", this.modelPath);
    const lengthEntry = entries.get("length");
    // A tensor of a type we cannot size (INT4, FLOAT8, ...) is still copied byte for byte when
    // its length is written down: only the weights we prune need a known element size.
    if (lengthEntry !== undefined && !hasKnownSize(t.dataType)) {
      return { location, file, offset, length: parseSize(lengthEntry, 0, subject, "length", this.modelPath) };
    }
    const byteLength = this.byteLength(t);
    const length = parseSize(lengthEntry, byteLength, subject, "length", this.modelPath);
    if (length !== byteLength) {
      throw new ExternalDataError(
        subject,
        `external data length ${length} in ${this.modelPath} does not match its shape [${t.dims.join(", ")}] of ${typeName(t.dataType)} (${byteLength} bytes); the model is inconsistent — re-export it`,
      );
    }
    return { location, file, offset, length };
  }

  /** The distinct external data files the model refers to (absolute, as named; not realpath'd). */
  externalFiles(): string[] {
    const files = new Set<string>();
    for (const t of allTensors(this.model)) {
      const range = this.externalRange(t);
      if (range) files.add(range.file);
    }
    return [...files];
  }

  /** The tensor's raw little-endian bytes (a fresh copy the caller owns). */
  async read(t: TensorProto): Promise<Uint8Array> {
    const range = this.externalRange(t);
    if (range) {
      const out = new Uint8Array(range.length);
      await this.readExternal(t, range, 0, out);
      return out;
    }
    return inlineBytes(t, this.byteLength(t), this.modelPath);
  }

  /**
   * Bytes [start, start + into.length) of the tensor, read into `into`: lets a copy stream a
   * large external tensor in chunks through one reused buffer.
   */
  async readRange(t: TensorProto, start: number, into: Uint8Array): Promise<Uint8Array> {
    const range = this.externalRange(t);
    const total = range ? range.length : this.byteLength(t);
    if (start < 0 || start + into.length > total) {
      throw new ExternalDataError(tensorSubject(t), `byte range [${start}, ${start + into.length}) is outside the tensor's ${total} bytes`);
    }
    if (range) {
      await this.readExternal(t, range, start, into);
    } else {
      into.set(inlineBytes(t, total, this.modelPath).subarray(start, start + into.length));
    }
    return into;
  }

  /**
   * Checks that every external tensor's file exists and holds its range, and that every inline
   * tensor's data matches its shape, so a job fails before it writes anything.
   */
  async validate(): Promise<void> {
    for (const t of allTensors(this.model)) {
      const range = this.externalRange(t);
      if (range) {
        this.checkFits(t, range, await this.openFile(t, range));
      } else if (hasKnownSize(t.dataType)) {
        // Inline tensors of other types (STRING constants, ...) are carried over untouched.
        checkInlineCount(t, this.byteLength(t), this.modelPath);
      }
    }
  }

  async close(): Promise<void> {
    const pending = [...this.files.values()];
    this.files.clear();
    for (const p of pending) {
      try {
        await (await p).handle.close();
      } catch {
        // A file that failed to open has nothing to close.
      }
    }
  }

  private async readExternal(t: TensorProto, range: ExternalRange, start: number, into: Uint8Array): Promise<void> {
    const f = await this.openFile(t, range);
    this.checkFits(t, range, f);
    let done = 0;
    while (done < into.length) {
      const { bytesRead } = await f.handle.read(into, done, into.length - done, range.offset + start + done);
      if (bytesRead === 0) {
        throw new ExternalDataError(
          tensorSubject(t),
          `external data file ${range.file} ended while reading at byte ${range.offset + start + done}; it was truncated while in use`,
        );
      }
      done += bytesRead;
    }
  }

  private checkFits(t: TensorProto, range: ExternalRange, f: OpenFile): void {
    const needed = range.offset + range.length;
    if (f.size < needed) {
      throw new ExternalDataError(
        tensorSubject(t),
        `external data file ${range.file} is too short: the tensor needs bytes [${range.offset}, ${needed}) (${needed} bytes) but the file has ${f.size} bytes; it is truncated or belongs to another export — re-copy it`,
      );
    }
  }

  private openFile(t: TensorProto, range: ExternalRange): Promise<OpenFile> {
    let p = this.files.get(range.file);
    if (!p) {
      p = openForRead(range.file);
      this.files.set(range.file, p);
      // A failed open is not cached: the user may fix the file and retry with the same instance.
      p.catch(() => {
        if (this.files.get(range.file) === p) this.files.delete(range.file);
      });
    }
    return p.catch((cause: NodeJS.ErrnoException) => {
      const why = cause.code === "ENOENT" ? "does not exist" : `cannot be opened (${cause.message})`;
      throw new ExternalDataError(
        tensorSubject(t),
        `external data file ${range.file} (location "${range.location}" in ${this.modelPath}) ${why}; keep the data file next to the model`,
        { cause },
      );
    });
  }
}

async function openForRead(file: string): Promise<OpenFile> {
  const handle = await open(file, "r");
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw Object.assign(new Error("not a regular file"), { code: "EISDIR" });
    return { handle, size: st.size };
  } catch (err) {
    await handle.close().catch(() => undefined);
    throw err;
  }
}

function elementCount(t: TensorProto, modelPath: string): number {
  let n = 1n;
  for (const d of t.dims) {
    if (d < 0n) {
      throw new OnnxFormatError(tensorSubject(t), `has a negative dimension in [${t.dims.join(", ")}] in ${modelPath}; the model is corrupt`);
    }
    n *= d;
  }
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new OnnxFormatError(tensorSubject(t), `shape [${t.dims.join(", ")}] in ${modelPath} is too large to address`);
  }
  return Number(n);
}

function parseSize(value: string | undefined, fallback: number, subject: string, key: string, modelPath: string): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value.trim())) {
    throw new ExternalDataError(subject, `external data ${key} "${value}" in ${modelPath} is not a non-negative integer; the model is corrupt`);
  }
  const n = Number(value.trim());
  if (!Number.isSafeInteger(n)) {
    throw new ExternalDataError(subject, `external data ${key} ${value} in ${modelPath} is too large`);
  }
  return n;
}

/**
 * Raw little-endian bytes of an inline tensor. The typed fields follow the ONNX spec: int32_data
 * carries the bit patterns of every type of 16 bits or fewer, uint64_data carries UINT32 too.
 */
function inlineBytes(t: TensorProto, byteLength: number, modelPath: string): Uint8Array {
  checkInlineCount(t, byteLength, modelPath);
  if (usesRawData(t, byteLength)) return new Uint8Array(t.rawData);
  const size = elementSize(t.dataType, `${tensorSubject(t)} in ${modelPath}`);
  const count = byteLength / size;
  const out = new Uint8Array(byteLength);
  const view = new DataView(out.buffer);
  const values = typedField(t).values;
  switch (t.dataType) {
    case DT.FLOAT:
      for (let i = 0; i < count; i++) view.setFloat32(i * 4, values[i] as number, true);
      break;
    case DT.DOUBLE:
      for (let i = 0; i < count; i++) view.setFloat64(i * 8, values[i] as number, true);
      break;
    case DT.INT32:
      for (let i = 0; i < count; i++) view.setInt32(i * 4, values[i] as number, true);
      break;
    case DT.INT64:
      for (let i = 0; i < count; i++) view.setBigInt64(i * 8, values[i] as bigint, true);
      break;
    case DT.UINT64:
      for (let i = 0; i < count; i++) view.setBigUint64(i * 8, values[i] as bigint, true);
      break;
    case DT.UINT32:
      for (let i = 0; i < count; i++) view.setUint32(i * 4, Number(values[i] as bigint), true);
      break;
    default:
      // 8- and 16-bit types: the low bits of each int32 are the element's bit pattern.
      if (size === 2) for (let i = 0; i < count; i++) view.setUint16(i * 2, (values[i] as number) & 0xffff, true);
      else for (let i = 0; i < count; i++) view.setUint8(i, (values[i] as number) & 0xff);
  }
  return out;
}

function usesRawData(t: TensorProto, byteLength: number): boolean {
  return t.rawData.length > 0 || byteLength === 0;
}

function checkInlineCount(t: TensorProto, byteLength: number, modelPath: string): void {
  const subject = tensorSubject(t);
  if (usesRawData(t, byteLength)) {
    if (t.rawData.length !== byteLength) {
      throw new OnnxFormatError(
        subject,
        `raw_data has ${t.rawData.length} bytes in ${modelPath} but shape [${t.dims.join(", ")}] of ${typeName(t.dataType)} needs ${byteLength}; the model is corrupt`,
      );
    }
    return;
  }
  const count = byteLength / elementSize(t.dataType, `${subject} in ${modelPath}`);
  const typed = typedField(t);
  if (typed.values.length !== count) {
    throw new OnnxFormatError(
      subject,
      `${typed.field} has ${typed.values.length} values in ${modelPath} but shape [${t.dims.join(", ")}] needs ${count}; the model is corrupt`,
    );
  }
}

function hasKnownSize(dataType: number): boolean {
  try {
    elementSize(dataType, "");
    return true;
  } catch {
    return false;
  }
}

function typedField(t: TensorProto): { field: string; values: readonly (number | bigint)[] } {
  switch (t.dataType) {
    case DT.FLOAT:
      return { field: "float_data", values: t.floatData };
    case DT.DOUBLE:
      return { field: "double_data", values: t.doubleData };
    case DT.INT64:
      return { field: "int64_data", values: t.int64Data };
    case DT.UINT32:
    case DT.UINT64:
      return { field: "uint64_data", values: t.uint64Data };
    default:
      return { field: "int32_data", values: t.int32Data };
  }
}
