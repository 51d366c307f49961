/**
 * The data plane's wire format: a sample's state as StateChunk messages of at most ~1 MiB (the
 * gRPC message limit is 1.5 MiB), and the reassembly on the receiving side. Tensors go in the
 * state's order, each in offset order, so the receiver can check the stream as it goes and
 * rebuild the same tensors bit for bit.
 */
import { create } from "@bufbuild/protobuf";
import type * as grpc from "@grpc/grpc-js";
import { StateChunkSchema, type StateChunk } from "../../../gen/atvprune/v1/worker_data_pb.js";
import type { SampleState, OrtType } from "../../../core/src/index.js";
import { writeMessage } from "../../../rpc/index.js";
import { StateStreamError } from "../errors.js";
import { bytesOf, expectedBytes, isOrtType, tensorOver } from "../checkpoint/tensorBytes.js";

/** Data bytes per chunk. */
export const CHUNK_BYTES = 1 << 20;

/** The chunks of one sample's state (views of its tensors: nothing is copied here). */
export function* chunksOf(sample: number, state: SampleState, chunkBytes = CHUNK_BYTES): Generator<StateChunk> {
  for (const [name, t] of state) {
    const data = bytesOf(t);
    const total = BigInt(data.byteLength);
    let offset = 0;
    do {
      const end = Math.min(offset + chunkBytes, data.byteLength);
      yield create(StateChunkSchema, {
        sample, tensor: name, type: t.type, dims: t.dims, totalBytes: total, offset: BigInt(offset),
        data: data.subarray(offset, end), tensorsInSample: state.size,
      });
      offset = end;
    } while (offset < data.byteLength);
  }
}

interface PartialTensor {
  name: string;
  type: OrtType;
  dims: number[];
  buffer: Uint8Array;
  filled: number;
}

/**
 * Rebuilds states from chunks. Samples must arrive in order from `from`; a tensor's chunks in
 * offset order. Anything else is a protocol error naming the sample and tensor.
 */
export class StateAssembler {
  private expected: number;
  private state: SampleState = new Map();
  private tensors = 0;
  private current: PartialTensor | undefined;

  constructor(private readonly subject: string, from: number) {
    this.expected = from;
  }

  /** The next sample expected (= samples completed so far + from). */
  get nextSample(): number {
    return this.expected;
  }

  /** Adds a chunk; returns the sample's state when this chunk completed it. */
  push(c: StateChunk): SampleState | undefined {
    const where = `${this.subject}, sample ${c.sample}, tensor ${c.tensor}`;
    if (c.sample !== this.expected) throw new StateStreamError(where, `expected a chunk of sample ${this.expected}`);
    if (c.tensorsInSample < 1 || (this.tensors > 0 && c.tensorsInSample !== this.tensors)) {
      throw new StateStreamError(where, `tensors_in_sample ${c.tensorsInSample} does not match the sample's other chunks`);
    }
    this.tensors = c.tensorsInSample;
    let p = this.current;
    if (!p) {
      if (c.offset !== 0n) throw new StateStreamError(where, `first chunk starts at offset ${c.offset}, not 0`);
      if (!isOrtType(c.type)) throw new StateStreamError(where, `unknown tensor type ${JSON.stringify(c.type)}`);
      if (this.state.has(c.tensor)) throw new StateStreamError(where, "tensor sent twice");
      const total = Number(c.totalBytes);
      if (expectedBytes(c.type, c.dims) !== total) throw new StateStreamError(where, `total_bytes ${total} does not fit ${c.type}[${c.dims.join(", ")}]`);
      // Not zero-filled: every byte is written before the tensor is handed out (filled === total).
      p = { name: c.tensor, type: c.type, dims: [...c.dims], buffer: Buffer.allocUnsafeSlow(total), filled: 0 };
      this.current = p;
    } else if (c.tensor !== p.name || Number(c.offset) !== p.filled || Number(c.totalBytes) !== p.buffer.byteLength) {
      throw new StateStreamError(where, `expected ${p.name} from offset ${p.filled} of ${p.buffer.byteLength} bytes, got offset ${c.offset} of ${c.totalBytes}`);
    }
    if (p.filled + c.data.byteLength > p.buffer.byteLength) throw new StateStreamError(where, "chunk runs past total_bytes");
    p.buffer.set(c.data, p.filled);
    p.filled += c.data.byteLength;
    if (p.filled < p.buffer.byteLength) return undefined;
    this.state.set(p.name, tensorOver(p.type, p.dims, p.buffer.buffer as ArrayBuffer));
    this.current = undefined;
    if (this.state.size < this.tensors) return undefined;
    const done = this.state;
    this.state = new Map();
    this.tensors = 0;
    this.expected++;
    return done;
  }
}

/** Where served states come from: an outbox that fills as samples are computed, or a file. */
export interface SampleFeed {
  count: number;
  samples(from: number): AsyncIterable<[number, SampleState]>;
}

/**
 * Streams samples from..count-1 of `feed` over a PullStates call, honouring backpressure (a
 * slow reader holds the sender instead of growing its buffers). Returns the data bytes sent.
 */
export async function sendStates(
  call: grpc.ServerWritableStream<unknown, StateChunk>, feed: SampleFeed, from: number, onBytes: (n: number) => void = () => {},
): Promise<number> {
  let sent = 0;
  for await (const [j, state] of feed.samples(from)) {
    for (const chunk of chunksOf(j, state)) {
      await writeMessage(call, chunk);
      sent += chunk.data.byteLength;
      onBytes(chunk.data.byteLength);
    }
  }
  return sent;
}
