/**
 * A replica's exchange records in the job's work dir, exchange/<block>/<topic>.r<replica>.bin:
 * written (temp + fsync + rename) before they are published, so a peer that comes later finds
 * them even when the replica that wrote them is gone. All numbers little-endian:
 *
 *    0  "ATVPXCH1"               magic and format version
 *    8  u32 first                the first sample
 *   12  u32 count                samples in the file
 *   16  count records, each:
 *         u32 sample             first + i
 *         u32 vectors            vectors in the record
 *         u32 length x vectors   float64 per vector
 *         f64 x sum(lengths)     the vectors' values, one after the other
 *  end  u32 crc32 of every byte before it
 *
 * The reader checks the magic, that samples run first, first + 1, ... and that the lengths
 * account for every byte, and the checksum: anything else is an ExchangeError naming the file.
 */
import { mkdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { crc32 } from "node:zlib";
import { InvalidArgumentError } from "../../../core/src/index.js";
import { writeFileAtomic } from "../checkpoint/checkpoints.js";
import { ExchangeError } from "../errors.js";
import { float64Bytes, float64From, type ReplicaRecords } from "./exchangeWire.js";

const MAGIC = Buffer.from("ATVPXCH1", "latin1");

/** Topics name files: letters, digits, '_' and '-'. */
export function checkTopic(topic: string): void {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(topic)) throw new InvalidArgumentError("topic", `must be 1-64 letters, digits, '_' or '-', got ${JSON.stringify(topic)}`);
}

export function exchangePath(workDir: string, block: number, topic: string, replica: number): string {
  checkTopic(topic);
  return join(workDir, "exchange", String(block), `${topic}.r${replica}.bin`);
}

export function encodeExchangeFile(data: ReplicaRecords): Buffer {
  let size = 16 + 4;
  for (const r of data.records) {
    size += 8 + 4 * r.length;
    for (const v of r) size += v.byteLength;
  }
  const out = Buffer.alloc(size);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(data.first, 8);
  out.writeUInt32LE(data.records.length, 12);
  let p = 16;
  data.records.forEach((r, i) => {
    p = out.writeUInt32LE(data.first + i, p);
    p = out.writeUInt32LE(r.length, p);
    for (const v of r) p = out.writeUInt32LE(v.length, p);
    for (const v of r) {
      out.set(float64Bytes(v), p);
      p += v.byteLength;
    }
  });
  out.writeUInt32LE(crc32(out.subarray(0, p)), p);
  return out;
}

export function decodeExchangeFile(bytes: Buffer, path: string): ReplicaRecords {
  const bad = (why: string) => new ExchangeError(path, `is not a valid exchange file (${why}); remove it and rerun the replica that wrote it`);
  if (bytes.length < 20 || !bytes.subarray(0, 8).equals(MAGIC)) throw bad("no ATVPXCH1 header");
  const body = bytes.length - 4;
  if (crc32(bytes.subarray(0, body)) !== bytes.readUInt32LE(body)) throw bad("checksum mismatch: truncated or damaged");
  const first = bytes.readUInt32LE(8);
  const count = bytes.readUInt32LE(12);
  const records: Float64Array[][] = [];
  let p = 16;
  const need = (n: number, what: string) => {
    if (p + n > body) throw bad(`${what} runs past the end`);
  };
  for (let i = 0; i < count; i++) {
    need(8, `record ${i}`);
    const sample = bytes.readUInt32LE(p);
    const vectors = bytes.readUInt32LE(p + 4);
    p += 8;
    if (sample !== first + i) throw bad(`record ${i} is sample ${sample}, expected ${first + i}`);
    need(4 * vectors, `sample ${sample}`);
    const lengths = Array.from({ length: vectors }, (_, k) => bytes.readUInt32LE(p + 4 * k));
    p += 4 * vectors;
    const record: Float64Array[] = [];
    for (const n of lengths) {
      need(8 * n, `sample ${sample}`);
      record.push(float64From(bytes.subarray(p, p + 8 * n), path));
      p += 8 * n;
    }
    records.push(record);
  }
  if (p !== body) throw bad(`${body - p} bytes after the last record`);
  return { first, records };
}

/** Writes atomically: a reader sees the whole file or none. */
export async function writeExchangeFile(path: string, data: ReplicaRecords): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, encodeExchangeFile(data));
}

export async function readExchangeFile(path: string): Promise<ReplicaRecords> {
  return decodeExchangeFile(await readFile(path), path);
}
