/**
 * The records of the replica exchange on the wire (ExchangeRecord) and their checks. A record
 * goes as one message, or, when its vectors pass ~1 MiB, as consecutive messages split between
 * vectors; a vector larger than a message goes as consecutive pieces of it. Vectors travel as
 * their float64 bytes, little-endian, so they come back bit for bit.
 */
import { endianness } from "node:os";
import { create } from "@bufbuild/protobuf";
import { ExchangeRecordSchema, type ExchangeRecord } from "../../../gen/atvprune/v1/worker_data_pb.js";
import type { SampleRecord } from "../../../core/src/index.js";
import { ExchangeError } from "../errors.js";
import { CHUNK_BYTES } from "./stateStream.js";

/** The records of one replica: records[i] is sample first + i. */
export interface ReplicaRecords {
  first: number;
  records: SampleRecord[];
}

const LITTLE_ENDIAN = endianness() === "LE";

function requireLittleEndian(): void {
  if (!LITTLE_ENDIAN) throw new ExchangeError("host", "the replica exchange is not supported yet on big-endian hosts");
}

/** The bytes of a vector as they travel (a view: nothing is copied). */
export function float64Bytes(v: Float64Array): Uint8Array {
  requireLittleEndian();
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** A vector from its little-endian bytes (copied: the bytes may not be 8-aligned). */
export function float64From(bytes: Uint8Array, subject: string): Float64Array {
  if (bytes.byteLength % 8 !== 0) throw new ExchangeError(subject, `a vector of ${bytes.byteLength} bytes is not a whole number of float64`);
  requireLittleEndian();
  const v = new Float64Array(bytes.byteLength / 8);
  new Uint8Array(v.buffer).set(bytes);
  return v;
}

/** Refuses a record whose vectors are not float64 vectors, before anything is written or sent. */
export function checkVectors(record: SampleRecord, subject: string): void {
  for (const [i, v] of record.entries()) {
    if (!(v instanceof Float64Array)) throw new ExchangeError(subject, `vector ${i} is not a Float64Array`);
  }
}

/**
 * The messages of one sample's record: vectors grouped up to `maxBytes` per message, and a
 * vector larger than that in pieces of `maxBytes` (rounded down to whole float64).
 */
export function* recordMessages(sample: number, record: SampleRecord, maxBytes = CHUNK_BYTES): Generator<ExchangeRecord> {
  const vectorsInRecord = record.length;
  const pieceBytes = Math.max(8, maxBytes - (maxBytes % 8));
  let first = 0;
  do {
    const v = record[first];
    if (v && v.byteLength > maxBytes) {
      const bytes = float64Bytes(v);
      for (let offset = 0; offset < bytes.byteLength; offset += pieceBytes) {
        yield create(ExchangeRecordSchema, {
          sample, vectors: [bytes.subarray(offset, offset + pieceBytes)], firstVector: first, vectorsInRecord,
          vectorBytes: BigInt(bytes.byteLength), vectorOffset: BigInt(offset),
        });
      }
      first++;
      continue;
    }
    let end = first;
    let bytes = 0;
    while (end < record.length && (end === first || bytes + record[end]!.byteLength <= maxBytes)) bytes += record[end++]!.byteLength;
    yield create(ExchangeRecordSchema, { sample, vectors: record.slice(first, end).map(float64Bytes), firstVector: first, vectorsInRecord });
    first = end;
  } while (first < record.length);
}

/**
 * Rebuilds a replica's records from its messages. Samples must come in order from `first`, a
 * record's parts in vector order; anything else is an ExchangeError naming the sample.
 */
export class RecordAssembler {
  private readonly records: SampleRecord[] = [];
  private current: SampleRecord | undefined;
  private vectors = 0;
  /** the vector arriving in pieces, as its bytes so far */
  private piece: { bytes: Uint8Array; filled: number } | undefined;

  constructor(private readonly subject: string, private readonly first: number, private readonly end: number) {}

  push(m: ExchangeRecord): void {
    const expected = this.first + this.records.length;
    const where = `${this.subject}, sample ${m.sample}`;
    if (m.sample !== expected) {
      throw new ExchangeError(where, expected < this.end ? `expected sample ${expected}` : `the replica owns samples [${this.first}, ${this.end}); got more`);
    }
    const partial = this.current ?? [];
    if (m.firstVector !== partial.length || (this.current !== undefined && m.vectorsInRecord !== this.vectors)) {
      throw new ExchangeError(where, `expected vectors from ${partial.length} of ${this.current ? this.vectors : "a new record"}, got from ${m.firstVector} of ${m.vectorsInRecord}`);
    }
    if (partial.length + m.vectors.length > m.vectorsInRecord) throw new ExchangeError(where, `${partial.length + m.vectors.length} vectors in a record of ${m.vectorsInRecord}`);
    this.vectors = m.vectorsInRecord;
    if (m.vectorBytes > 0n || this.piece) {
      if (!this.takePiece(m, where)) {
        this.current = partial;
        return;
      }
      partial.push(float64From(this.piece!.bytes, where));
      this.piece = undefined;
    } else {
      for (const bytes of m.vectors) partial.push(float64From(bytes, where));
    }
    if (partial.length < m.vectorsInRecord) {
      this.current = partial;
      return;
    }
    this.records.push(partial);
    this.current = undefined;
  }

  /** Adds a piece of a vector; true once the vector is whole. */
  private takePiece(m: ExchangeRecord, where: string): boolean {
    const filled = this.piece?.filled ?? 0;
    const total = this.piece?.bytes.byteLength ?? Number(m.vectorBytes);
    if (m.vectors.length !== 1 || m.vectorBytes !== BigInt(total) || m.vectorOffset !== BigInt(filled)) {
      throw new ExchangeError(where, `expected the piece of vector ${m.firstVector} at byte ${filled} of ${total}, got ${m.vectors.length} vector(s) at byte ${m.vectorOffset} of ${m.vectorBytes}`);
    }
    const bytes = m.vectors[0]!;
    if (bytes.byteLength === 0 || filled + bytes.byteLength > total) throw new ExchangeError(where, `a piece of ${bytes.byteLength} bytes at byte ${filled} of a ${total}-byte vector`);
    this.piece ??= { bytes: new Uint8Array(total), filled: 0 };
    this.piece.bytes.set(bytes, filled);
    this.piece.filled += bytes.byteLength;
    return this.piece.filled === total;
  }

  /** Every record, once the stream has ended; fails unless exactly [first, end) arrived. */
  finish(): ReplicaRecords {
    const got = this.first + this.records.length;
    if (this.current !== undefined || got !== this.end) {
      throw new ExchangeError(this.subject, `the stream ended at sample ${got}${this.current ? " (inside its record)" : ""}; the replica owns samples [${this.first}, ${this.end})`);
    }
    return { first: this.first, records: this.records };
  }
}

/** Fails unless `got` holds exactly samples [first, end), each with `vectors` vectors when given. */
export function expectRecords(got: ReplicaRecords, first: number, end: number, subject: string, vectors?: number): void {
  const last = got.first + got.records.length;
  if (got.first !== first || last !== end) throw new ExchangeError(subject, `holds samples [${got.first}, ${last}); replica's samples are [${first}, ${end})`);
  if (vectors === undefined) return;
  got.records.forEach((r, i) => {
    if (r.length !== vectors) throw new ExchangeError(subject, `sample ${got.first + i} has ${r.length} vectors; the other samples have ${vectors}`);
  });
}
