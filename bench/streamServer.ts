/**
 * The serving side of the stream benchmark, in its own process as an upstream worker is: a
 * worker whose outbox holds the benchmark's states under jobs run0..runN-1, and a plain grpc-js
 * server streaming raw 1 MiB Buffers. Prints {"worker","raw"} addresses, then serves until killed.
 */
import * as grpc from "@grpc/grpc-js";
import type { SampleState } from "../services/core/src/pipeline/blockEngine.js";
import { GRPC_OPTIONS } from "../services/rpc/credentials.js";
import { startWorker } from "../services/worker/src/worker.js";

const [samples, tokens, hidden, jobs] = process.argv.slice(2).map(Number) as [number, number, number, number];
const MiB = 1 << 20;

const RAW_METHOD: grpc.MethodDefinition<Buffer, Buffer> = {
  path: "/bench.Raw/Stream", requestStream: false, responseStream: true,
  requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b,
  responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b,
};

const states: SampleState[] = Array.from({ length: samples }, (_, j) => {
  const data = new Float32Array(tokens * hidden);
  for (let i = 0; i < data.length; i += 997) data[i] = j + i;
  return new Map([["/model/layers.3/Add_1_output_0", { type: "float32" as const, dims: [1, tokens, hidden], data }]]);
});
const worker = await startWorker({ host: "127.0.0.1", port: 0, id: "bench-upstream", threads: 1, log: () => {} });
for (const job of ["warm", ...Array.from({ length: jobs }, (_, i) => `run${i}`)]) {
  const box = worker.outboxes.open(job, 1, samples);
  states.forEach((s, j) => box.put(j, s));
}

const raw = new grpc.Server(GRPC_OPTIONS);
const payload = Buffer.alloc(MiB, 7);
raw.addService({ Stream: RAW_METHOD } as grpc.ServiceDefinition, {
  Stream: async (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
    const n = Number(call.request.toString());
    for (let i = 0; i < n; i++) {
      if (!call.write(payload)) await new Promise((r) => call.once("drain", r));
    }
    call.end();
  },
});
const port = await new Promise<number>((resolve, reject) => raw.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
process.stdout.write(JSON.stringify({ worker: worker.address, raw: `127.0.0.1:${port}` }) + "\n");
