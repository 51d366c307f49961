// The data plane's wire format and flow control: a state with a tensor of several MiB goes out
// in ~1 MiB StateChunks and comes back bit-identical; a reader that stops reading holds the
// sender back instead of letting it buffer everything; protocol errors name sample and tensor.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { status, type ClientReadableStream } from "@grpc/grpc-js";
import { StateChunkSchema, type StateChunk } from "../../services/gen/atvprune/v1/worker_data_pb.js";
import type { SampleState } from "../../services/core/src/pipeline/blockEngine.js";
import type { WireTensor } from "../../services/core/src/runtime/wireTensor.js";
import { encodeStateChunk } from "../../services/worker/src/dataplane/chunkCodec.js";
import { StateStreamError } from "../../services/worker/src/errors.js";
import { CHUNK_BYTES, StateAssembler, chunksOf } from "../../services/worker/src/dataplane/stateStream.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { dataClient, withTimeout } from "./harness.js";

function state(seed: number, floats: number): SampleState {
  const big = new Float32Array(floats);
  for (let i = 0; i < big.length; i++) big[i] = Math.sin(seed * 1000 + i) * 1e3;
  big[7] = -0; big[8] = NaN; big[9] = Infinity; // exact bits, not just values
  const half = Uint16Array.from({ length: 96 }, (_, i) => (seed * 31 + i * 7) & 0xffff);
  return new Map<string, WireTensor>([
    ["/model/layers.2/residual", { type: "float32", dims: [1, floats / 64, 64], data: big }],
    ["/model/layers.2/delta", { type: "float16", dims: [1, 3, 32], data: half }],
    ["position_ids", { type: "int64", dims: [1, 2], data: BigInt64Array.from([BigInt(seed), -5n]) }],
    ["empty", { type: "float32", dims: [1, 0, 64], data: new Float32Array(0) }],
  ]);
}

function assertSameState(a: SampleState, b: SampleState): void {
  assert.deepEqual([...b.keys()], [...a.keys()]);
  for (const [name, t] of a) {
    const u = b.get(name)!;
    assert.equal(u.type, t.type, name);
    assert.deepEqual(u.dims, t.dims, name);
    assert.equal(u.data.constructor, t.data.constructor, name);
    assert.ok(Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)), `${name} bytes`);
  }
}

test("a 3.5 MiB tensor goes out in ~1 MiB chunks and reassembles bit for bit", () => {
  const s = state(1, (7 * CHUNK_BYTES) / 2 / 4); // 3.5 MiB
  const chunks = [...chunksOf(4, s)];
  const big = chunks.filter((c) => c.tensor === "/model/layers.2/residual");
  assert.equal(big.length, 4);
  assert.ok(big.every((c) => c.data.byteLength <= CHUNK_BYTES && c.totalBytes === BigInt(3.5 * CHUNK_BYTES)));
  assert.deepEqual(big.map((c) => Number(c.offset)), [0, 1, 2, 3].map((i) => i * CHUNK_BYTES));
  assert.equal(chunks.filter((c) => c.tensor === "empty").length, 1, "an empty tensor still sends one chunk");
  assert.ok(chunks.every((c) => c.sample === 4 && c.tensorsInSample === 4));
  const a = new StateAssembler("test", 4);
  let out: SampleState | undefined;
  for (const [i, c] of chunks.entries()) {
    out = a.push(c);
    assert.equal(out === undefined, i < chunks.length - 1);
  }
  assertSameState(s, out!);
  assert.equal(a.nextSample, 5);
});

test("the assembler rejects out-of-order samples, gaps and sizes that do not fit, naming sample and tensor", () => {
  const chunks = [...chunksOf(0, state(2, CHUNK_BYTES / 2))];
  const base = chunks[0]!;
  const tweak = (patch: Partial<StateChunk>) => create(StateChunkSchema, { ...base, ...patch });
  assert.throws(() => new StateAssembler("job j block 3", 0).push(tweak({ sample: 1 })), (e: unknown) => e instanceof StateStreamError && /sample 1, tensor \/model\/layers.2\/residual/.test((e as Error).message));
  assert.throws(() => new StateAssembler("x", 0).push(tweak({ offset: 5n })), /offset 5/);
  assert.throws(() => new StateAssembler("x", 0).push(tweak({ totalBytes: 12n })), /does not fit/);
  assert.throws(() => new StateAssembler("x", 0).push(tweak({ type: "string" })), /unknown tensor type/);
  const big = [...chunksOf(0, state(2, CHUNK_BYTES / 2))].filter((c) => c.tensor.endsWith("residual"));
  const a = new StateAssembler("x", 0);
  a.push(big[0]!);
  assert.throws(() => a.push(big[0]!), /expected \/model\/layers.2\/residual from offset/);
});

test("the hand-written StateChunk encoder writes exactly protobuf-es's bytes", () => {
  const chunks = [
    ...chunksOf(0, state(3, CHUNK_BYTES / 2)),
    ...chunksOf(300, state(4, 1024)),
    create(StateChunkSchema, {}),
    create(StateChunkSchema, { sample: 2 ** 31, tensor: "é/ü", type: "float16", dims: [0, 1, 2 ** 32 - 1], totalBytes: 2n ** 40n, offset: 2n ** 35n + 3n, data: new Uint8Array([1, 2, 3]), tensorsInSample: 200 }),
  ];
  for (const c of chunks) {
    const fast = encodeStateChunk(c);
    assert.ok(fast.equals(toBinary(StateChunkSchema, c)), `chunk ${c.tensor}@${c.offset}`);
    assert.equal(fromBinary(StateChunkSchema, fast).totalBytes, c.totalBytes);
  }
});

let server: WorkerHandle;
before(async () => {
  server = await startWorker({ host: "127.0.0.1", port: 0, id: "ss", threads: 1, pullWaitMs: 200, log: () => {} });
});
after(() => server.close());

async function served(): Promise<number> {
  const m = await server.metrics.activationBytes.get();
  return m.values.filter((v) => v.labels.direction === "served").reduce((a, v) => a + v.value, 0);
}

test("PullStates over gRPC: a slow reader holds the sender back; every byte arrives intact", async () => {
  const samples = 16;
  const floats = (4 * CHUNK_BYTES) / 4; // 4 MiB per sample, 64 MiB in all
  const box = server.outboxes.open("bp", 5, samples);
  const states = Array.from({ length: samples }, (_, j) => state(j, floats));
  for (let j = 0; j < samples; j++) box.put(j, states[j]!);
  const total = samples * (floats * 4 + 96 * 2 + 16);

  const client = dataClient(server.address);
  try {
    const call = client.pullStates({ jobId: "bp", block: 5, fromSample: 2 }) as unknown as ClientReadableStream<StateChunk>;
    const a = new StateAssembler("bp", 2);
    const got: SampleState[] = [];
    let received = 0;
    let paused = false;
    const pausedAt: number[] = [];
    await withTimeout(new Promise<void>((resolve, reject) => {
      call.on("data", (c: StateChunk) => {
        received += c.data.byteLength;
        const s = a.push(c);
        if (s) got.push(s);
        if (!paused && received >= 4 * CHUNK_BYTES) {
          // Stop reading for a while: the server must stall instead of sending everything.
          paused = true;
          call.pause();
          setTimeout(async () => {
            pausedAt.push(await served(), received);
            call.resume();
          }, 500);
        }
      });
      call.on("error", reject);
      call.on("end", resolve);
    }), 20_000, "slow pull");
    const [sentWhilePaused, receivedWhilePaused] = pausedAt as [number, number];
    const expected = total * (samples - 2) / samples;
    assert.equal(received, expected);
    // grpc-js buffers up to 16 messages per stream before write() says wait: ~16 MiB, not 56.
    assert.ok(sentWhilePaused - receivedWhilePaused <= 24 * CHUNK_BYTES,
      `while the reader paused the server sent ${sentWhilePaused} bytes of ${expected}, the reader had ${receivedWhilePaused}: no backpressure`);
    assert.equal(got.length, samples - 2);
    got.forEach((s, i) => assertSameState(states[i + 2]!, s));
  } finally {
    client.close();
  }
});

test("PullStates for states this worker does not have is UNAVAILABLE (the puller retries)", async () => {
  const client = dataClient(server.address);
  try {
    const call = client.pullStates({ jobId: "nope", block: 1 }) as unknown as ClientReadableStream<StateChunk>;
    const err = await withTimeout(new Promise<{ code: number; details: string }>((resolve) => { call.on("data", () => {}); call.on("error", resolve); }), 10_000, "unknown pull");
    assert.equal(err.code, status.UNAVAILABLE);
    assert.match(err.details, /job nope: the states entering block 1/);
  } finally {
    client.close();
  }
});
