// WorkerService accepts only the coordinator and peer workers (issue 7, problem 4): a worker
// started with mutual TLS, a token and allowed roots, called over real grpc-js connections on
// loopback. A plaintext client, a client without a certificate or with one from another CA is
// refused at the handshake; a wrong or missing token is UNAUTHENTICATED; an authenticated call
// whose model, calibration set, .npy, output or work dir lies outside the roots (or escapes them
// through a link) is PERMISSION_DENIED naming the field, and nothing is written there.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { WorkerService, type ShardAssignment } from "../../services/gen/atvprune/v1/worker_pb.js";
import { WorkerDataService } from "../../services/gen/atvprune/v1/worker_data_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { ShardAssignmentSchema } from "../../services/gen/atvprune/v1/worker_pb.js";
import { createClient, type Client } from "../../services/rpc/grpcAdapter.js";
import { channelCredentials, channelOptions, GRPC_OPTIONS, type TlsConfig } from "../../services/rpc/credentials.js";
import { bearerClientOptions, UNAUTHENTICATED_MESSAGE } from "../../services/rpc/bearerAuth.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { parseWorkerArgs } from "../../services/worker/src/workerArgs.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";
import { tempDir } from "../support/fixtures.js";
import { TestPki } from "../support/certs.js";
import { ExchangeError } from "../../services/worker/src/errors.js";
import { GrpcReplicaExchange } from "../../services/worker/src/dataplane/replicaExchange.js";
import { ExchangeRegistry } from "../../services/worker/src/dataplane/exchangeRegistry.js";
import { exchangePath, writeExchangeFile } from "../../services/worker/src/dataplane/exchangeFile.js";
import { DATA_PLANE_CHANNEL_OPTIONS } from "../../services/worker/src/dataplane/upstreamStates.js";

const tmp = tempDir("worker-security");
const root = join(tmp.path, "root");
const outside = join(tmp.path, "outside");
const jobs = join(tmp.path, "jobs");
const pki = new TestPki(tmp.path);
const TOKEN = "cluster-token-1";

let worker: WorkerHandle;
let model: { model: string; calib: string };
let outsideModel: { model: string; calib: string };
const clients: { close(): void }[] = [];

const nodeTls = (): TlsConfig => ({ ca: pki.file("ca.crt"), cert: pki.file("node.crt"), key: pki.file("node.key") });

before(async () => {
  for (const d of [root, outside, jobs]) mkdirSync(d, { recursive: true });
  pki.ca("ca");
  pki.ca("other-ca");
  pki.leaf("node", "ca", "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  pki.leaf("person", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  pki.leaf("stranger", "other-ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  const g = await generateModel({ outDir: join(root, "m"), layers: 2, hidden: 32, samples: 2, seqLen: 16, imageTokens: 8, seed: 1 });
  model = { model: g.modelPath, calib: g.calibPath };
  const o = await generateModel({ outDir: join(outside, "m"), layers: 2, hidden: 32, samples: 2, seqLen: 16, imageTokens: 8, seed: 1 });
  outsideModel = { model: o.modelPath, calib: o.calibPath };
  worker = await startWorker({ threads: 1, log: () => {}, tls: nodeTls(), token: TOKEN, allowedRoots: [root], workRoots: [jobs] });
});

after(async () => {
  for (const c of clients) c.close();
  await worker.close();
  tmp.cleanup();
});

function client(tls: TlsConfig | undefined, token?: string): Client<typeof WorkerService> {
  const c = createClient(WorkerService, worker.address, channelCredentials(tls), channelOptions(tls, { ...bearerClientOptions(token), "grpc.use_local_subchannel_pool": 1 }));
  clients.push(c);
  return c;
}

type Assignment = MessageInitShape<typeof ShardAssignmentSchema>;

function assignment(over: { model?: string; calib?: string; out?: string; workDir?: string; method?: string } = {}): Assignment {
  return {
    jobId: "job-intruder", shard: 0, firstBlock: 0, endBlock: 2, attempt: 1, upstream: "",
    workDir: over.workDir ?? join(jobs, "job-intruder"),
    plan: {
      model: over.model ?? model.model, calib: over.calib ?? model.calib, out: over.out ?? join(root, "out"),
      method: { case: (over.method ?? "wanda") as "wanda", value: {} }, sparsity: 0.5, propagation: "sequential",
    },
  };
}

/** The status RunShard ends with (OK = 0), bounded by a deadline. */
async function runShardStatus(c: Client<typeof WorkerService>, a: Assignment): Promise<{ code: grpc.status; details: string }> {
  try {
    for await (const _ of c.runShard(a as ShardAssignment, { deadlineMs: 10_000 })) { /* progress */ }
    return { code: grpc.status.OK, details: "" };
  } catch (err) {
    const e = err as grpc.ServiceError;
    assert.equal(typeof e.code, "number", `not a gRPC error: ${String(err)}`);
    return { code: e.code, details: e.details };
  }
}

describe("who may call WorkerService", () => {
  const intrusion = () => assignment({ model: outsideModel.model, calib: outsideModel.calib, out: join(outside, "leak"), workDir: join(outside, "work") });

  test("a plaintext client calling RunShard with paths outside the roots is refused, and nothing is written there", async () => {
    const r = await runShardStatus(client(undefined), intrusion());
    assert.equal(r.code, grpc.status.UNAVAILABLE, `${grpc.status[r.code]} ${r.details}`);
    assert.equal(existsSync(join(outside, "work")), false);
    assert.equal(existsSync(join(outside, "leak")), false);
  });

  test("a TLS client without a client certificate is refused", async () => {
    const r = await runShardStatus(client({ ca: pki.file("ca.crt") }, TOKEN), intrusion());
    assert.equal(r.code, grpc.status.UNAVAILABLE, `${grpc.status[r.code]} ${r.details}`);
  });

  test("a client certificate from another CA is refused", async () => {
    const r = await runShardStatus(client({ ca: pki.file("ca.crt"), cert: pki.file("stranger.crt"), key: pki.file("stranger.key") }, TOKEN), intrusion());
    assert.equal(r.code, grpc.status.UNAVAILABLE, `${grpc.status[r.code]} ${r.details}`);
  });

  test("a cluster certificate with a missing or wrong token → UNAUTHENTICATED, on every method", async () => {
    for (const token of [undefined, "cluster-token-2"]) {
      const c = client(nodeTls(), token);
      const r = await runShardStatus(c, intrusion());
      assert.equal(r.code, grpc.status.UNAUTHENTICATED, `token ${token}: ${grpc.status[r.code]} ${r.details}`);
      assert.equal(r.details, UNAUTHENTICATED_MESSAGE);
      const unauthenticated = (e: unknown) => (e as grpc.ServiceError).code === grpc.status.UNAUTHENTICATED;
      await assert.rejects(c.getInfo({}, { deadlineMs: 5000 }), unauthenticated);
      await assert.rejects(c.cancelShard({ jobId: "j", shard: 0 }, { deadlineMs: 5000 }), unauthenticated);
      await assert.rejects(c.updateUpstream({ jobId: "j", shard: 0, upstream: "x:1" }, { deadlineMs: 5000 }), unauthenticated);
      const data = createClient(WorkerDataService, worker.address, channelCredentials(nodeTls()), channelOptions(nodeTls(), { ...bearerClientOptions(token), "grpc.use_local_subchannel_pool": 1 }));
      clients.push(data);
      const pull = async () => { for await (const _ of data.pullStates({ jobId: "j", block: 1 }, { deadlineMs: 5000 })) { /* states */ } };
      await assert.rejects(pull(), unauthenticated);
      const exchange = async () => { for await (const _ of data.pullExchange({ jobId: "j", block: 1, topic: "pool" }, { deadlineMs: 5000 })) { /* records */ } };
      await assert.rejects(exchange(), unauthenticated);
      await assert.rejects(c.finalizeOutput({ jobId: "j", plan: intrusion().plan }, { deadlineMs: 5000 }), unauthenticated);
    }
    assert.equal(existsSync(join(outside, "work")), false);
  });

  test("the cluster certificate and the token → served", async () => {
    const info = await client(nodeTls(), TOKEN).getInfo({}, { deadlineMs: 5000 });
    assert.equal(info.address, worker.address);
  });

  test("replicas all-gather over mutual TLS with the token; a replica with the wrong token is refused for good", async () => {
    const records = (j: number) => [Float64Array.of(j, -0, j / 3)];
    const own = (js: number[]) => new Map(js.map((j) => [j, records(j)]));
    const dirA = join(jobs, "exchange-a");
    const dirB = join(jobs, "exchange-b");
    // Replica 1's records are in replica 0's work dir already: replica 0 needs no peer.
    await writeExchangeFile(exchangePath(dirA, 0, "pool", 1), { first: 2, records: [records(2), records(3)] });
    const replica = (r: number, workDir: string, registry: ExchangeRegistry, token: string) => new GrpcReplicaExchange({
      jobId: "job-tls", samples: 4, slice: { replica: r, replicas: 2 }, peers: [worker.address, "127.0.0.1:1"], workDir, registry,
      credentials: channelCredentials(nodeTls()), channelOptions: { ...GRPC_OPTIONS, ...DATA_PLANE_CHANNEL_OPTIONS, ...channelOptions(nodeTls()), ...bearerClientOptions(token) },
      log: () => {}, backoffMs: { initial: 20, max: 100 },
    });
    const intruder = replica(1, join(jobs, "exchange-c"), new ExchangeRegistry(), "cluster-token-2");
    const zero = replica(0, dirA, worker.exchanges, TOKEN);
    const [a, b] = await Promise.all([zero.allGather(0, "pool", own([0, 1])), replica(1, dirB, new ExchangeRegistry(), TOKEN).allGather(0, "pool", own([2, 3]))]);
    for (const got of [a, b]) assert.deepEqual(got.map((r) => [...r[0]!]), [0, 1, 2, 3].map((j) => [...records(j)[0]!]));
    await assert.rejects(intruder.allGather(0, "pool", own([2, 3])), (e) => e instanceof ExchangeError && /refused PullExchange/.test(e.message));
  });

  test("with client names set, a certificate from the CA that names someone else → PERMISSION_DENIED", async () => {
    const strict = await startWorker({ threads: 1, log: () => {}, tls: nodeTls(), token: TOKEN, allowedRoots: [root], clientNames: ["node"] });
    try {
      const as = (name: string) => createClient(WorkerService, strict.address, channelCredentials({ ca: pki.file("ca.crt"), cert: pki.file(`${name}.crt`), key: pki.file(`${name}.key`) }),
        channelOptions(undefined, { ...bearerClientOptions(TOKEN), "grpc.use_local_subchannel_pool": 1 }));
      const person = as("person");
      const node = as("node");
      clients.push(person, node);
      await assert.rejects(person.getInfo({}, { deadlineMs: 5000 }), (e: grpc.ServiceError) => e.code === grpc.status.PERMISSION_DENIED && /client certificate \(person\) is not one this service accepts \(node\)/.test(e.details));
      assert.equal((await node.getInfo({}, { deadlineMs: 5000 })).address, strict.address);
    } finally {
      await strict.close();
    }
  });
});

describe("the worker's own path policy (authenticated caller)", () => {
  const denied = async (a: Assignment, field: RegExp, what: string) => {
    const r = await runShardStatus(client(nodeTls(), TOKEN), a);
    assert.equal(r.code, grpc.status.PERMISSION_DENIED, `${what}: ${grpc.status[r.code]} ${r.details}`);
    assert.match(r.details, field, what);
  };

  test("model, calibration set, output and work dir outside the roots: PERMISSION_DENIED naming the field", async () => {
    await denied(assignment({ model: outsideModel.model }), /^spec\.model: .* is outside the allowed roots/, "model");
    await denied(assignment({ calib: outsideModel.calib }), /^spec\.calib: .* is outside the allowed roots/, "calib");
    await denied(assignment({ out: join(outside, "leak") }), /^spec\.out: .* is outside the allowed roots/, "out");
    await denied(assignment({ workDir: join(outside, "work") }), /^work_dir: .* is outside the allowed roots/, "work dir");
    await denied(assignment({ workDir: join(jobs, "..", "outside", "work") }), /^work_dir: /, "work dir through ..");
    // FinalizeOutput confines the plan's paths the same way.
    await assert.rejects(client(nodeTls(), TOKEN).finalizeOutput({ jobId: "j", plan: assignment({ out: join(outside, "leak") }).plan }, { deadlineMs: 5000 }),
      (e: grpc.ServiceError) => e.code === grpc.status.PERMISSION_DENIED && /^spec\.out: .* is outside the allowed roots/.test(e.details));
    assert.equal(existsSync(join(outside, "work")), false);
    assert.equal(existsSync(join(outside, "leak")), false);
  });

  test("a worker root that does not exist: FAILED_PRECONDITION naming the worker's flags", async () => {
    const w = await startWorker({ threads: 1, log: () => {}, tls: nodeTls(), token: TOKEN, allowedRoots: [root], workRoots: [join(tmp.path, "no-such-jobs")] });
    try {
      const c = createClient(WorkerService, w.address, channelCredentials(nodeTls()), channelOptions(undefined, { ...bearerClientOptions(TOKEN), "grpc.use_local_subchannel_pool": 1 }));
      clients.push(c);
      const { code, details } = await runShardStatus(c, assignment());
      assert.equal(code, grpc.status.FAILED_PRECONDITION, details);
      assert.match(details, /worker root .*no-such-jobs cannot be resolved \(ENOENT\); create it or fix the worker's --allow-root\/--work-root/);
    } finally {
      await w.close();
    }
  });

  test("a symbolic link inside a root that points outside is outside", async () => {
    symlinkSync(outsideModel.model, join(root, "linked.onnx"));
    symlinkSync(outside, join(root, "linked-dir"));
    await denied(assignment({ model: join(root, "linked.onnx") }), /^spec\.model: /, "linked model");
    await denied(assignment({ out: join(root, "linked-dir", "out") }), /^spec\.out: /, "out through a linked folder");
    await denied(assignment({ workDir: join(root, "linked-dir", "work") }), /^work_dir: /, "work dir through a linked folder");
  });

  test("a model inside the roots whose external data links outside: PERMISSION_DENIED naming the data file, nothing written", async () => {
    const dir = join(root, "leaky");
    mkdirSync(dir);
    copyFileSync(model.model, join(dir, "model.onnx"));
    symlinkSync(join(dirname(outsideModel.model), "model.onnx.data"), join(dir, "model.onnx.data"));
    const out = join(root, "leaky-out");
    await denied(assignment({ model: join(dir, "model.onnx"), out }), /^spec\.model \(external data model\.onnx\.data\): .* is outside the allowed roots/, "external data");
    assert.equal(existsSync(out), false);
  });

  test("an .npy named by the calibration set outside the roots: PERMISSION_DENIED naming the line", async () => {
    writeFileSync(join(outside, "secret.npy"), "not really an npy");
    const calib = join(root, "embeds.jsonl");
    writeFileSync(calib, JSON.stringify({ inputs_embeds: "../outside/secret.npy", image_mask: [0, 1] }) + "\n");
    await denied(assignment({ calib }), /^spec\.calib \(.*embeds\.jsonl:1 inputs_embeds\): .* is outside the allowed roots/, "npy");
  });
});

describe("worker command line", () => {
  test("no TLS and no --insecure is refused, TLS needs cert, key and CA; --allow-root repeats, defaults to the current directory", () => {
    const named = (flag: string, re: RegExp) => (e: unknown) => e instanceof InvalidArgumentError && e.subject === flag && re.test(e.message);
    assert.throws(() => parseWorkerArgs(["--listen", "127.0.0.1:0"]), named("--tls-cert", /mutual TLS.*--insecure/));
    assert.throws(() => parseWorkerArgs(["--tls-cert", "a.crt", "--tls-key", "a.key"]), named("--tls-ca", /--tls-ca/));
    const tls = parseWorkerArgs(["--tls-cert", "a.crt", "--tls-key", "a.key", "--tls-ca", "ca.crt", "--allow-root", "/data/models", "--allow-root=/data/out", "--work-root", "/data/jobs"]);
    assert.equal(tls.tls?.requireClientCert, true, "a worker with TLS always asks for client certificates");
    assert.deepEqual(tls.allowedRoots, ["/data/models", "/data/out"]);
    assert.deepEqual(tls.workRoots, ["/data/jobs"]);
    assert.equal(tls.insecure, false);
    const insecure = parseWorkerArgs(["--insecure"], { ATVP_TOKEN: "from-env" });
    assert.equal(insecure.tls, undefined);
    assert.equal(insecure.insecure, true);
    assert.equal(insecure.token, "from-env");
    assert.deepEqual(insecure.allowedRoots, [process.cwd()]);
    const tokenFile = join(tmp.path, "token");
    writeFileSync(tokenFile, "file-token\n", { mode: 0o600 });
    assert.equal(parseWorkerArgs(["--insecure", "--token-file", tokenFile], { ATVP_TOKEN: "from-env" }).token, "file-token");
    assert.throws(() => parseWorkerArgs(["--insecure", "--token-file", join(tmp.path, "none")]), named("--token-file", /cannot read/));
    assert.deepEqual(parseWorkerArgs(["--tls-cert", "a.crt", "--tls-key", "a.key", "--tls-ca", "ca.crt", "--tls-client-name", "atvp-coordinator", "--tls-client-name", "atvp-worker"]).clientNames, ["atvp-coordinator", "atvp-worker"]);
    assert.throws(() => parseWorkerArgs(["--insecure", "--tls-client-name", "x"]), named("--tls-client-name", /needs --tls-cert/));
  });
});
