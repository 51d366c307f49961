/**
 * The records of the replica exchange on the wire (ExchangeRecord) and their checks. A record
 * goes as one message, or, when its vectors pass ~1 MiB, as consecutive messages split between
 * vectors (a vector is never split: one larger than a message is refused before anything is
 * sent). Vectors travel as their float64 bytes, little-endian, so they come back bit for bit.
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

/** Refuses a record with a vector too large for one message, before anything is written or sent. */
export function checkVectorSizes(record: SampleRecord, subject: string, maxBytes = CHUNK_BYTES): void {
  for (const [i, v] of record.entries()) {
    if (!(v instanceof Float64Array)) throw new ExchangeError(subject, `vector ${i} is not a Float64Array`);
    if (v.byteLength > maxBytes) throw new ExchangeError(subject, `vector ${i} has ${v.length} float64 (${v.byteLength} bytes); the exchange sends at most ${maxBytes} bytes per vector`);
  }
}

/** The messages of one sample's record: vectors grouped up to `maxBytes` per message. */
export function* recordMessages(sample: number, record: SampleRecord, maxBytes = CHUNK_BYTES): Generator<ExchangeRecord> {
  let first = 0;
  do {
    let end = first;
    let bytes = 0;
    while (end < record.length && (end === first || bytes + record[end]!.byteLength <= maxBytes)) bytes += record[end++]!.byteLength;
    yield create(ExchangeRecordSchema, {
      sample, vectors: record.slice(first, end).map(float64Bytes), firstVector: first, vectorsInRecord: record.length,
    });
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
    for (const bytes of m.vectors) partial.push(float64From(bytes, where));
    this.vectors = m.vectorsInRecord;
    if (partial.length < m.vectorsInRecord) {
      this.current = partial;
      return;
    }
    this.records.push(partial);
    this.current = undefined;
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
