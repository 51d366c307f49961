/**
 * states/input-<b>.bin: the boundary states of every sample entering block b, written by the
 * worker that computed them and read by whichever worker resumes or serves them later.
 *
 *   "ATVPSTS1" | u32 version = 1 | u32 samples                                   (16 bytes)
 *   per sample: u32 tensors | u32 0
 *     per tensor: u32 H | H bytes of UTF-8 JSON {"name","type","dims","bytes"}
 *                 | zeros to a multiple of 8 | `bytes` bytes of data | zeros to a multiple of 8
 *   "ATVPEND1" | u32 samples | u32 0                                             (16 bytes)
 *
 * All integers little-endian; tensor data is the tensor's own little-endian bytes, so a state
 * read back is bit-identical. Written to a temp file, synced and renamed: the final name only
 * ever holds a complete file. The trailer still lets a reader reject a file cut short by a
 * broken copy.
 */
import { open, rename, rm, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import type { SampleState, WireTensor } from "../../../core/src/index.js";
import { syncDir, tempPath } from "./checkpoints.js";
import { CheckpointError } from "../errors.js";
import { bytesOf, expectedBytes, isOrtType, tensorOver } from "./tensorBytes.js";

const MAGIC = Buffer.from("ATVPSTS1", "ascii");
const TRAILER = Buffer.from("ATVPEND1", "ascii");
const VERSION = 1;
const ZEROS = new Uint8Array(8);

interface TensorHeader {
  name: string;
  type: string;
  dims: number[];
  bytes: number;
}

const pad8 = (n: number) => (8 - (n % 8)) % 8;

/** Writes a states file sample by sample (as samples are computed); commit() publishes it. */
export class StateFileWriter {
  private position = 0;
  private written = 0;
  private closed = false;

  private constructor(readonly path: string, private readonly tmp: string, private readonly handle: FileHandle, readonly count: number) {}

  static async create(path: string, count: number): Promise<StateFileWriter> {
    const tmp = tempPath(path);
    const handle = await open(tmp, "w");
    const w = new StateFileWriter(path, tmp, handle, count);
    const head = Buffer.alloc(16);
    MAGIC.copy(head, 0);
    head.writeUInt32LE(VERSION, 8);
    head.writeUInt32LE(count, 12);
    await w.write(head);
    return w;
  }

  async append(state: SampleState): Promise<void> {
    if (this.written >= this.count) throw new CheckpointError(this.path, `got more than the ${this.count} samples it was created for`);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(state.size, 0);
    await this.write(head);
    for (const [name, t] of state) {
      const data = bytesOf(t);
      const header: TensorHeader = { name, type: t.type, dims: [...t.dims], bytes: data.byteLength };
      const json = Buffer.from(JSON.stringify(header), "utf8");
      const lead = Buffer.alloc(4 + json.length + pad8(4 + json.length));
      lead.writeUInt32LE(json.length, 0);
      json.copy(lead, 4);
      await this.write(lead);
      await this.write(data);
      await this.write(ZEROS.subarray(0, pad8(data.byteLength)));
    }
    this.written++;
  }

  /** Syncs and renames into place; fails unless exactly `count` samples were appended. */
  async commit(): Promise<void> {
    if (this.written !== this.count) throw new CheckpointError(this.path, `has ${this.written} of ${this.count} samples; not committing it`);
    const tail = Buffer.alloc(16);
    TRAILER.copy(tail, 0);
    tail.writeUInt32LE(this.count, 8);
    await this.write(tail);
    await this.handle.sync();
    this.closed = true;
    await this.handle.close();
    await rename(this.tmp, this.path);
    await syncDir(dirname(this.path));
  }

  async abort(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.handle.close().catch(() => {});
    }
    await rm(this.tmp, { force: true }).catch(() => {});
  }

  private async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.byteLength - done, this.position + done);
      done += bytesWritten;
    }
    this.position += bytes.byteLength;
  }
}

/** Writes a whole states file at once. */
export async function writeStateFile(path: string, states: readonly SampleState[]): Promise<void> {
  const w = await StateFileWriter.create(path, states.length);
  try {
    for (const s of states) await w.append(s);
    await w.commit();
  } catch (err) {
    await w.abort();
    throw err;
  }
}

/** Reads a states file sample by sample, from any sample on (PullStates resumes mid-file). */
export class StateFileReader {
  private constructor(readonly path: string, private readonly handle: FileHandle, readonly count: number, private readonly size: number) {}

  static async open(path: string): Promise<StateFileReader> {
    let handle: FileHandle;
    try {
      handle = await open(path, "r");
    } catch (err) {
      throw new CheckpointError(path, `cannot open the states file: ${(err as Error).message}`, { cause: err });
    }
    try {
      const size = (await handle.stat()).size;
      if (size < 32) throw new CheckpointError(path, `is ${size} bytes, too short for a states file`);
      const head = await readExact(handle, 0, 16, path);
      if (!head.subarray(0, 8).equals(MAGIC)) throw new CheckpointError(path, "is not an atv-prune states file (bad magic)");
      const version = head.readUInt32LE(8);
      if (version !== VERSION) throw new CheckpointError(path, `has format version ${version}; this worker reads version ${VERSION}`);
      const count = head.readUInt32LE(12);
      const tail = await readExact(handle, size - 16, 16, path);
      if (!tail.subarray(0, 8).equals(TRAILER) || tail.readUInt32LE(8) !== count) {
        throw new CheckpointError(path, "is truncated or corrupt (no trailer); delete it to recompute its block");
      }
      return new StateFileReader(path, handle, count, size);
    } catch (err) {
      await handle.close().catch(() => {});
      throw err;
    }
  }

  /** Yields [sample, state] for samples from..count-1, reading only the headers of skipped ones. */
  async *samples(from = 0): AsyncGenerator<[number, SampleState]> {
    let pos = 16;
    for (let j = 0; j < this.count; j++) {
      const where = `${this.path}, sample ${j}`;
      const n = (await readExact(this.handle, pos, 8, where, this.size)).readUInt32LE(0);
      pos += 8;
      const state: SampleState = new Map();
      for (let i = 0; i < n; i++) {
        const hLen = (await readExact(this.handle, pos, 4, where, this.size)).readUInt32LE(0);
        const header = parseHeader(await readExact(this.handle, pos + 4, hLen, where, this.size), where);
        pos += 4 + hLen + pad8(4 + hLen);
        if (j >= from) {
          if (pos + header.bytes > this.size - 16) throw new CheckpointError(where, `tensor ${header.name} runs past the end of the file`);
          const buffer = new ArrayBuffer(header.bytes);
          await readInto(this.handle, pos, new Uint8Array(buffer), where);
          state.set(header.name, tensorOver(header.type as WireTensor["type"], header.dims, buffer));
        }
        pos += header.bytes + pad8(header.bytes);
      }
      if (j >= from) yield [j, state];
    }
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

/** Every sample of a states file; `expected` checks the sample count. */
export async function readStateFile(path: string, expected?: number): Promise<SampleState[]> {
  const r = await StateFileReader.open(path);
  try {
    if (expected !== undefined && r.count !== expected) {
      throw new CheckpointError(path, `holds ${r.count} samples; the job has ${expected} (a work dir of another job or calibration set?)`);
    }
    const out: SampleState[] = [];
    for await (const [, s] of r.samples()) out.push(s);
    return out;
  } finally {
    await r.close();
  }
}

function parseHeader(bytes: Buffer, where: string): TensorHeader {
  let h: TensorHeader;
  try {
    h = JSON.parse(bytes.toString("utf8")) as TensorHeader;
  } catch {
    throw new CheckpointError(where, "has a malformed tensor header");
  }
  if (typeof h?.name !== "string" || !isOrtType(h.type) || !Array.isArray(h.dims) || expectedBytes(h.type, h.dims) !== h.bytes) {
    throw new CheckpointError(where, `has an inconsistent tensor header ${bytes.toString("utf8").slice(0, 200)}`);
  }
  return h;
}

async function readExact(handle: FileHandle, position: number, length: number, where: string, size?: number): Promise<Buffer> {
  if (size !== undefined && position + length > size) throw new CheckpointError(where, "the states file ends early");
  const buf = Buffer.alloc(length);
  await readInto(handle, position, buf, where);
  return buf;
}

async function readInto(handle: FileHandle, position: number, into: Uint8Array, where: string): Promise<void> {
  let done = 0;
  while (done < into.byteLength) {
    const { bytesRead } = await handle.read(into, done, into.byteLength - done, position + done);
    if (bytesRead === 0) throw new CheckpointError(where, "the states file ends early");
    done += bytesRead;
  }
}
