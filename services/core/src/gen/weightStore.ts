/**
 * Streams generated float tensors into the model's external-data file. Weights are produced a
 * chunk at a time and written at their (4096-aligned) offset straight away, so generating a
 * multi-gigabyte model needs only a few megabytes of memory.
 */
import { closeSync, openSync, writeSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import {
  StringStringEntryProtoSchema,
  TensorProto_DataLocation,
  TensorProtoSchema,
  type TensorProto,
} from "../../../gen/onnx_pb.js";
import { ExternalDataError } from "../errors.js";
import { floatToHalf, OnnxDataType } from "../onnx/dtype.js";

/**
 * Produces elements [start, start + count) of a tensor into dst[0, count). Calls come in order
 * and cover the tensor exactly once, so stateful random streams may ignore `start`.
 */
export type TensorFill = (dst: Float32Array, start: number, count: number) => void;

export type FloatType = OnnxDataType.FLOAT | OnnxDataType.FLOAT16;

const ALIGN = 4096;
const CHUNK_ELEMENTS = 1 << 20;

export class ExternalDataWriter {
  private fd: number | undefined;
  private end = 0;
  private payload = 0;
  private readonly f32 = new Float32Array(CHUNK_ELEMENTS);
  private readonly f16 = new Uint16Array(CHUNK_ELEMENTS);

  /**
   * @param path where the data file is written (truncated if it exists)
   * @param location the file name recorded in each tensor's external_data (relative to the model)
   */
  constructor(readonly path: string, readonly location: string, readonly dataType: FloatType) {
    try {
      this.fd = openSync(path, "w");
    } catch (err) {
      throw new ExternalDataError(path, `cannot create external data file (${(err as Error).message})`, { cause: err });
    }
  }

  /** Bytes of tensor data written so far (alignment padding not counted). */
  get payloadBytes(): number {
    return this.payload;
  }

  /** Size of the data file once closed. */
  get fileBytes(): number {
    return this.end;
  }

  get elementBytes(): number {
    return this.dataType === OnnxDataType.FLOAT16 ? 2 : 4;
  }

  /** Generates and writes one tensor; returns its initializer pointing into the data file. */
  add(name: string, dims: readonly number[], fill: TensorFill): TensorProto {
    const fd = this.fd;
    if (fd === undefined) throw new ExternalDataError(this.path, `cannot add ${name}: the data file is already closed`);
    const count = dims.reduce((a, b) => a * b, 1);
    const esize = this.elementBytes;
    const offset = Math.ceil(this.end / ALIGN) * ALIGN;
    let position = offset;
    for (let start = 0; start < count; start += CHUNK_ELEMENTS) {
      const n = Math.min(CHUNK_ELEMENTS, count - start);
      fill(this.f32, start, n);
      let bytes: Uint8Array;
      if (this.dataType === OnnxDataType.FLOAT16) {
        floatsToHalves(this.f32, this.f16, n);
        bytes = new Uint8Array(this.f16.buffer, 0, n * 2);
      } else {
        bytes = new Uint8Array(this.f32.buffer, 0, n * 4);
      }
      writeAll(fd, bytes, position, name);
      position += bytes.byteLength;
    }
    const length = count * esize;
    this.end = offset + length;
    this.payload += length;
    return create(TensorProtoSchema, {
      name,
      dims: dims.map((d) => BigInt(d)),
      dataType: this.dataType,
      dataLocation: TensorProto_DataLocation.EXTERNAL,
      externalData: [
        create(StringStringEntryProtoSchema, { key: "location", value: this.location }),
        create(StringStringEntryProtoSchema, { key: "offset", value: String(offset) }),
        create(StringStringEntryProtoSchema, { key: "length", value: String(length) }),
      ],
    });
  }

  close(): void {
    if (this.fd !== undefined) {
      closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

/**
 * float32 -> float16 bits, bit-identical to floatToHalf. Values in the normal half range (all
 * weights, in practice) are rounded inline, which is several times faster than a call per element.
 */
export function floatsToHalves(src: Float32Array, dst: Uint16Array, n: number): void {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    const exp = (x >>> 23) & 0xff;
    if (exp > 112 && exp < 143) {
      const mant = x & 0x7fffff;
      const h = ((exp - 112) << 10) | (mant >>> 13);
      // Round to nearest even without a branch (random mantissas would mispredict half the time).
      const roundBit = (mant >>> 12) & 1;
      const sticky = ((mant & 0xfff) + 0xfff) >>> 12;
      dst[i] = ((x >>> 16) & 0x8000) | (h + (roundBit & (sticky | (h & 1))));
    } else {
      dst[i] = floatToHalf(src[i]!);
    }
  }
}

function writeAll(fd: number, bytes: Uint8Array, position: number, subject: string): void {
  let done = 0;
  while (done < bytes.byteLength) {
    let n: number;
    try {
      n = writeSync(fd, bytes, done, bytes.byteLength - done, position + done);
    } catch (err) {
      throw new ExternalDataError(subject, `cannot write external data (${(err as Error).message})`, { cause: err });
    }
    done += n;
  }
}
