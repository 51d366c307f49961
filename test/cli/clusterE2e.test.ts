// The documented cluster workflow through the real CLI: `atvp cluster up`, `atvp submit --wait`,
// `atvp status --json`, `atvp watch`, `atvp cluster down`, and the result equal to `atvp prune`.
// `cluster up` is secure by default (its own CA, certificates and token, which the CLI finds
// through cluster.json; callers without them are refused, workers confine paths), keeps
// cluster.json true across a coordinator restart, and `--insecure` says so loudly.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { WorkerService } from "../../services/gen/atvprune/v1/worker_pb.js";
import { createClient } from "../../services/rpc/grpcAdapter.js";
import { channelCredentials, channelOptions, type TlsConfig } from "../../services/rpc/credentials.js";
import { bearerClientOptions } from "../../services/rpc/bearerAuth.js";
import { CLI, tempDir } from "../support/fixtures.js";
import { WORKER_NODE_FLAGS } from "../../services/worker/src/nodeFlags.js";

const tmp = tempDir("cluster-cli");
const clusterDir = join(tmp.path, "cluster");
const insecureDir = join(tmp.path, "insecure-cluster");
after(() => {
  for (const dir of [clusterDir, insecureDir]) if (existsSync(join(dir, "cluster.json"))) atvp(["cluster", "down", "--dir", dir]);
  tmp.cleanup();
});

/** Alive and not a zombie (detached children are reparented; a container's init may not reap them). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

function atvp(args: string[], timeout = 120_000) {
  const env = { ...process.env };
  delete env["ATVP_TOKEN"];
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: tmp.path, encoding: "utf8", timeout, stdio: ["ignore", "pipe", "pipe"], env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function mode(path: string): number {
  return statSync(path).mode & 0o777;
}

interface ClusterJson {
  coordinator: string;
  coordinatorPid: number;
  natsPid: number;
  workers: { address: string; pid: number }[];
  insecure?: boolean;
  tls?: { ca: string; cert: string; key: string; serverName?: string };
  tokenFile?: string;
}

/** RunShard on a worker with model, calibration and output outside the allowed roots. */
async function intrude(address: string, tls: TlsConfig | undefined, token?: string): Promise<{ code: grpc.status; details?: string }> {
  const client = createClient(WorkerService, address, channelCredentials(tls), channelOptions(tls, { ...bearerClientOptions(token), "grpc.use_local_subchannel_pool": 1 }));
  try {
    const stream = client.runShard({
      jobId: "intruder", shard: 0, firstBlock: 0, endBlock: 1, workDir: "/tmp/atvp-intruder-work", attempt: 1,
      plan: { model: "/etc/hostname", calib: "/etc/passwd", out: "/tmp/atvp-intruder-out", method: { case: "wanda", value: {} }, sparsity: 0.5 },
    }, { deadlineMs: 10_000 });
    for await (const _ of stream) { /* progress */ }
    return { code: grpc.status.OK };
  } catch (err) {
    return { code: (err as grpc.ServiceError).code, details: (err as grpc.ServiceError).details };
  } finally {
    client.close();
  }
}

/** Stops the coordinator and starts it again with the same command line, as an operator would. */
async function restartCoordinator(cluster: ClusterJson): Promise<number> {
  const argv = readFileSync(`/proc/${cluster.coordinatorPid}/cmdline`, "utf8").split("\0").filter((a) => a !== "");
  process.kill(cluster.coordinatorPid, "SIGTERM");
  for (let i = 0; i < 100 && isRunning(cluster.coordinatorPid); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(!isRunning(cluster.coordinatorPid), "the coordinator stopped on SIGTERM");
  const log = openSync(join(clusterDir, "logs", "coordinator.log"), "a");
  const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ["ignore", log, log] });
  closeSync(log);
  child.unref();
  return child.pid!;
}

test("secure by default: cluster up, submit --wait, status, watch, a coordinator restart, cluster down; same model as atvp prune", async () => {
  const gen = atvp(["gen-model", "--layers", "4", "--hidden", "64", "--out", "m"]);
  assert.equal(gen.status, 0, gen.stderr);
  const local = atvp(["prune", "--model", "m/model.onnx", "--calib", "m/calib.jsonl", "--method", "wanda", "--sparsity", "0.5", "--out", "local"]);
  assert.equal(local.status, 0, local.stderr);

  const up = atvp(["cluster", "up", "--workers", "2", "--dir", clusterDir, "--allow-root", tmp.path, "--threads", "1"]);
  assert.equal(up.status, 0, up.stderr);
  assert.doesNotMatch(up.stderr, /WARNING/);
  const cluster = JSON.parse(readFileSync(join(clusterDir, "cluster.json"), "utf8")) as ClusterJson;
  assert.match(cluster.coordinator, /^127\.0\.0\.1:\d+$/);
  assert.equal(cluster.workers.length, 2);
  // The workers run with their node options (services/worker/src/nodeFlags.ts), as in the image.
  for (const w of cluster.workers) {
    const argv = readFileSync(`/proc/${w.pid}/cmdline`, "utf8").split("\0");
    const main = argv.findIndex((a) => a.endsWith("services/worker/src/main.js"));
    assert.ok(main > 0, argv.join(" "));
    assert.deepEqual(argv.slice(1, main), [...WORKER_NODE_FLAGS], `worker ${w.pid}: ${argv.join(" ")}`);
  }

  // The cluster's credentials: in the cluster folder, keys and token readable by their owner only.
  assert.equal(cluster.insecure, false);
  assert.ok(cluster.tls && cluster.tokenFile, "cluster.json names the CLI's certificate and the token file");
  for (const f of [cluster.tls.ca, cluster.tls.cert, cluster.tls.key, cluster.tokenFile]) assert.ok(f.startsWith(clusterDir), f);
  for (const f of [cluster.tls.key, cluster.tokenFile, join(clusterDir, "tls/coordinator.key"), join(clusterDir, "tls/worker.key")]) {
    assert.equal(mode(f), 0o600, `${f} mode ${mode(f).toString(8)}`);
  }
  assert.equal(mode(join(clusterDir, "tls")), 0o700);
  assert.equal(existsSync(join(clusterDir, "tls/ca.key")), false, "the CA key is gone once the certificates are signed");
  assert.ok(readFileSync(cluster.tokenFile, "utf8").trim().length >= 32);

  // The CLI finds coordinator, certificate and token through --cluster-dir alone.
  const submit = atvp(["submit", "--cluster-dir", clusterDir, "--model", "m/model.onnx", "--calib", "m/calib.jsonl",
    "--method", "wanda", "--sparsity", "0.5", "--out", "remote", "--wait"]);
  assert.equal(submit.status, 0, submit.stderr);
  const jobId = submit.stdout.split("\n")[0]!.trim();
  assert.match(jobId, /^job-/);
  const st = atvp(["status", jobId, "--cluster-dir", clusterDir, "--json"]);
  assert.equal(st.status, 0, st.stderr);
  const status = JSON.parse(st.stdout);
  assert.equal(status.state, "SUCCEEDED");
  assert.equal(status.blocksDone, 4);
  const watch = atvp(["watch", jobId, "--cluster-dir", clusterDir]);
  assert.equal(watch.status, 0, watch.stderr);
  assert.ok(watch.stdout.trim().split("\n").length >= 4);
  assert.ok(readFileSync(join(tmp.path, "remote/model.onnx.data")).equals(readFileSync(join(tmp.path, "local/model.onnx.data"))));

  // Without the cluster's certificate the coordinator refuses; with it but without the token too.
  const plain = atvp(["status", jobId, "--coordinator", cluster.coordinator]);
  assert.equal(plain.status, 1);
  assert.match(plain.stderr, /\[UNAVAILABLE\]/);
  const noToken = atvp(["status", jobId, "--coordinator", cluster.coordinator, "--tls-ca", cluster.tls.ca, "--tls-cert", cluster.tls.cert, "--tls-key", cluster.tls.key, "--tls-server-name", "localhost"]);
  assert.equal(noToken.status, 1);
  assert.match(noToken.stderr, /\[UNAUTHENTICATED\]/);

  // Workers: a plaintext caller is refused; the CLI's certificate is not a service's; a worker's
  // certificate with a wrong token is UNAUTHENTICATED, and with the token the worker's own path
  // policy still refuses files outside --allow-root.
  const worker = cluster.workers[0]!.address;
  assert.equal((await intrude(worker, undefined)).code, grpc.status.UNAVAILABLE);
  const token = readFileSync(cluster.tokenFile, "utf8").trim();
  const asCli = await intrude(worker, cluster.tls, token);
  assert.equal(asCli.code, grpc.status.PERMISSION_DENIED);
  assert.match(asCli.details!, /client certificate \(atvp-client\) is not one this service accepts/);
  const workerTls = { ...cluster.tls, cert: join(clusterDir, "tls/worker.crt"), key: join(clusterDir, "tls/worker.key") };
  assert.equal((await intrude(worker, workerTls, "wrong")).code, grpc.status.UNAUTHENTICATED);
  const outside = await intrude(worker, workerTls, token);
  assert.equal(outside.code, grpc.status.PERMISSION_DENIED);
  assert.match(outside.details!, /^spec\.model: \/etc\/hostname is outside the allowed roots/);
  assert.equal(existsSync("/tmp/atvp-intruder-work"), false);

  // A restarted coordinator listens where cluster.json says, and cluster down stops it too.
  const restarted = await restartCoordinator(cluster);
  let again = atvp(["status", jobId, "--cluster-dir", clusterDir, "--json"]);
  for (let i = 0; i < 50 && again.status !== 0; i++) {
    await new Promise((r) => setTimeout(r, 200));
    again = atvp(["status", jobId, "--cluster-dir", clusterDir, "--json"]);
  }
  assert.equal(again.status, 0, again.stderr);
  assert.equal(JSON.parse(again.stdout).state, "SUCCEEDED");

  const down = atvp(["cluster", "down", "--dir", clusterDir]);
  assert.equal(down.status, 0, down.stderr);
  assert.ok(JSON.parse(down.stdout).terminated.includes(restarted), down.stdout);
  assert.ok(!existsSync(join(clusterDir, "cluster.json")));
  for (const pid of [restarted, cluster.coordinatorPid, cluster.natsPid, ...cluster.workers.map((w) => w.pid)]) {
    assert.ok(!isRunning(pid), `process ${pid} still running`);
  }
});

test("cluster up --insecure: warns on start and in cluster.json, makes no credentials, and the CLI connects in plaintext", () => {
  const up = atvp(["cluster", "up", "--workers", "1", "--dir", insecureDir, "--allow-root", tmp.path, "--threads", "1", "--insecure"]);
  assert.equal(up.status, 0, up.stderr);
  assert.match(up.stderr, /WARNING: --insecure: no TLS and no token/);
  const cluster = JSON.parse(readFileSync(join(insecureDir, "cluster.json"), "utf8")) as ClusterJson;
  assert.equal(cluster.insecure, true);
  assert.equal(cluster.tls, undefined);
  assert.equal(cluster.tokenFile, undefined);
  assert.equal(existsSync(join(insecureDir, "tls")), false);
  assert.equal(existsSync(join(insecureDir, "token")), false);
  assert.match(readFileSync(join(insecureDir, "logs/worker-0.log"), "utf8"), /WARNING: --insecure: WorkerService serves plaintext/);
  const st = atvp(["status", "job-none", "--cluster-dir", insecureDir]);
  assert.equal(st.status, 1);
  assert.match(st.stderr, /\[NOT_FOUND\] GetJob job-none/);
  const down = atvp(["cluster", "down", "--dir", insecureDir]);
  assert.equal(down.status, 0, down.stderr);
  for (const pid of [cluster.coordinatorPid, cluster.natsPid, ...cluster.workers.map((w) => w.pid)]) assert.ok(!isRunning(pid), `process ${pid} still running`);
});
