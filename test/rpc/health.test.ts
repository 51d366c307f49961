// gRPC health (grpc.health.v1) and server reflection on a real coordinator and a real worker,
// called by grpc-js clients built from the services' own .proto files (as grpcurl and the
// kubelet would): Check and Watch follow the worker through device loss and draining, and
// reflection lists the services and returns JobService's descriptors.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator, type CoordinatorHandle } from "../../services/coordinator/src/coordinator.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { HEALTH_PROTO, REFLECTION_PROTO } from "../../services/rpc/health.js";
import { tempDir } from "../support/fixtures.js";

type Ctor = new (address: string, creds: grpc.ChannelCredentials) => grpc.Client & Record<string, (...args: unknown[]) => unknown>;
const healthPkg = grpc.loadPackageDefinition(loadSync(HEALTH_PROTO, { keepCase: true, enums: String })) as unknown as { grpc: { health: { v1: { Health: Ctor } } } };
const reflectionPkg = grpc.loadPackageDefinition(loadSync(REFLECTION_PROTO, { keepCase: true, oneofs: true })) as unknown as { grpc: { reflection: { v1: { ServerReflection: Ctor } } } };

const tmp = tempDir("health");
let nats: NatsServerHandle;
let coordinator: CoordinatorHandle;
const clients: grpc.Client[] = [];

function health(address: string) {
  const c = new healthPkg.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
  clients.push(c);
  return c;
}

function check(address: string, service: string): Promise<string> {
  return new Promise((resolve, reject) => {
    health(address)["Check"]!({ service }, { deadline: Date.now() + 5000 }, (err: grpc.ServiceError | null, res: { status: string }) => (err ? reject(err) : resolve(res.status)));
  });
}

/** One request/response on a ServerReflectionInfo stream. */
function reflect(address: string, request: Record<string, unknown>): Promise<Record<string, unknown>> {
  const c = new reflectionPkg.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  clients.push(c);
  return new Promise((resolve, reject) => {
    const call = c["ServerReflectionInfo"]!({ deadline: Date.now() + 5000 }) as grpc.ClientDuplexStream<unknown, Record<string, unknown>>;
    call.once("data", (res) => { call.end(); resolve(res); });
    call.once("error", reject);
    call.write(request);
  });
}

/** Reads a Watch stream's statuses until `until` has been seen (bounded by the deadline). */
function watch(address: string, service: string) {
  const statuses: string[] = [];
  const waiters: Array<() => void> = [];
  const call = health(address)["Watch"]!({ service }, { deadline: Date.now() + 30_000 }) as grpc.ClientReadableStream<{ status: string }>;
  call.on("data", (m) => { statuses.push(m.status); waiters.splice(0).forEach((w) => w()); });
  call.on("error", () => waiters.splice(0).forEach((w) => w()));
  return {
    statuses,
    async until(status: string, count = 1): Promise<void> {
      while (statuses.filter((s) => s === status).length < count) {
        await new Promise<void>((resolve, reject) => {
          waiters.push(resolve);
          call.once("end", () => reject(new Error(`Watch ended after ${JSON.stringify(statuses)}, before ${status}`)));
        });
      }
    },
    cancel: () => call.cancel(),
  };
}

before(async () => {
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
  coordinator = await startCoordinator({ nats: nats.url, workers: [], workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], log: () => {} });
});
after(async () => {
  for (const c of clients) c.close();
  await coordinator.close();
  await nats.stop();
  tmp.cleanup();
});

test("coordinator: Check answers SERVING for the server and JobService, NOT_FOUND for others", async () => {
  assert.equal(await check(coordinator.address, ""), "SERVING");
  assert.equal(await check(coordinator.address, "atvprune.v1.JobService"), "SERVING");
  await assert.rejects(check(coordinator.address, "atvprune.v1.NoSuchService"), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND);
});

test("coordinator: reflection lists the services and serves JobService's file", async () => {
  const listed = await reflect(coordinator.address, { list_services: "*" });
  const names = (listed["list_services_response"] as { service: Array<{ name: string }> }).service.map((s) => s.name).sort();
  assert.deepEqual(names, ["atvprune.v1.JobService", "grpc.health.v1.Health"]);

  const found = await reflect(coordinator.address, { file_containing_symbol: "atvprune.v1.JobService" });
  const files = (found["file_descriptor_response"] as { file_descriptor_proto: Buffer[] }).file_descriptor_proto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
  const job = files.find((f) => f.name === "atvprune/v1/job.proto");
  assert.ok(job, `files: ${files.map((f) => f.name).join(", ")}`);
  assert.equal(job.package, "atvprune.v1");
  assert.deepEqual(job.service.map((s) => s.name), ["JobService"]);
  assert.deepEqual(job.service[0]!.method.map((m) => m.name), ["SubmitJob", "GetJob", "ListJobs", "CancelJob", "WatchJob"]);
  assert.equal(job.service[0]!.method.find((m) => m.name === "WatchJob")!.serverStreaming, true);
  const spec = job.messageType.find((m) => m.name === "JobSpec");
  assert.ok(spec?.field.some((f) => f.name === "magnitude_scope"));

  const missing = await reflect(coordinator.address, { file_containing_symbol: "atvprune.v1.Nothing" });
  assert.equal((missing["error_response"] as { error_code: number }).error_code, grpc.status.NOT_FOUND);
});

test("worker: NOT_SERVING while its GPU is gone and while it drains; reflection lists WorkerService and WorkerDataService", async () => {
  // A stand-in nvidia-smi: the GPU "answers" while the flag file exists.
  const flag = join(tmp.path, "gpu-present");
  const smi = join(tmp.path, "nvidia-smi");
  writeFileSync(smi, `#!/bin/sh\n[ -f '${flag}' ] || exit 9\necho 81920\n`);
  chmodSync(smi, 0o755);
  writeFileSync(flag, "");
  let worker: WorkerHandle | undefined = await startWorker({
    threads: 1, device: "cuda", memoryBytes: 1 << 30, log: () => {}, deviceProbe: { command: smi, intervalMs: 50 },
  });
  try {
    assert.equal(await check(worker.address, ""), "SERVING");
    assert.equal(await check(worker.address, "atvprune.v1.WorkerService"), "SERVING");
    assert.equal(await check(worker.address, "atvprune.v1.WorkerDataService"), "SERVING");
    const listed = await reflect(worker.address, { list_services: "*" });
    assert.deepEqual((listed["list_services_response"] as { service: Array<{ name: string }> }).service.map((s) => s.name).sort(),
      ["atvprune.v1.WorkerDataService", "atvprune.v1.WorkerService", "grpc.health.v1.Health"]);

    const w = watch(worker.address, "");
    await w.until("SERVING");
    rmSync(flag);
    await w.until("NOT_SERVING");
    assert.equal(await check(worker.address, "atvprune.v1.WorkerService"), "NOT_SERVING");
    writeFileSync(flag, "");
    await w.until("SERVING", 2);
    assert.equal(await check(worker.address, ""), "SERVING");

    const closing = worker.close();
    worker = undefined;
    await w.until("NOT_SERVING", 2);
    w.cancel();
    await closing;
    assert.deepEqual(w.statuses, ["SERVING", "NOT_SERVING", "SERVING", "NOT_SERVING"]);
  } finally {
    await worker?.close();
  }
});

test("a CPU worker has no device to lose and serves from the start", async () => {
  const worker = await startWorker({ threads: 1, log: () => {} });
  try {
    assert.equal(await check(worker.address, ""), "SERVING");
  } finally {
    await worker.close();
  }
});
