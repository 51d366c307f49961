// The cluster commands of the real `atvp` CLI, spawned as child processes, without a real
// coordinator: flag errors, cluster.json handling, `cluster down` (dead pids, pids now owned by
// other programs, services that ignore SIGTERM), the nats-server-missing error, and
// submit/status/watch/cancel against an in-process fake JobService on loopback.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { JobEventSchema, JobSchema, JobService, JobState, type Job, type JobEvent, type JobSpec } from "../../services/gen/atvprune/v1/job_pb.js";
import { addService, writeMessage } from "../../services/rpc/grpcAdapter.js";
import { requireBearer } from "../../services/rpc/bearerAuth.js";
import { RpcError } from "../../services/rpc/status.js";
import { CliError } from "../../services/cli/src/cliError.js";
import { readClusterFile, writeClusterFile, type ClusterFile } from "../../services/cli/src/clusterFile.js";
import { CLI, REPO, tempDir } from "../support/fixtures.js";

const tmp = tempDir("cluster-cli");
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  tmp.cleanup();
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The environment of a CLI run: no token from the caller's shell leaks into the tests. */
function baseEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (!("ATVP_TOKEN" in extra)) delete env["ATVP_TOKEN"];
  return env;
}

/** Runs the CLI asynchronously (the fake coordinator lives in this process's event loop). */
function atvp(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: opts.cwd ?? REPO, env: opts.env ?? baseEnv(), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on("data", (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { child.kill("SIGKILL"); reject(new Error(`atvp ${args.join(" ")} timed out; stderr:\n${stderr}`)); }, 30_000);
    child.on("error", reject);
    child.on("close", (status) => { clearTimeout(timer); resolve({ status, stdout, stderr }); });
  });
}

function exited(r: Run, code: number, what: string): void {
  assert.equal(r.status, code, `${what}: exit ${r.status}, expected ${code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
}

/** A process that exists for the test, with `marker` in its command line like a cluster service. */
function fakeService(marker: string, ignoreTerm = false): ChildProcess {
  const script = `${ignoreTerm ? "process.on('SIGTERM', () => {});" : ""} setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["-e", script, marker], { stdio: "ignore" });
  children.push(child);
  return child;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A pid that was ours a moment ago and is not running any more. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await new Promise((r) => child.on("exit", r));
  return child.pid!;
}

function clusterJson(over: Partial<ClusterFile> = {}): ClusterFile {
  return {
    coordinator: "127.0.0.1:1", nats: "nats://127.0.0.1:2", workers: [{ address: "127.0.0.1:3", pid: 4_000_001 }],
    coordinatorPid: 4_000_002, natsPid: 4_000_003, metrics: { coordinator: 0, workers: [0] }, ...over,
  };
}

describe("flags", () => {
  test("atvp cluster with no subcommand → usage, exit 2", async () => {
    const r = await atvp(["cluster"]);
    exited(r, 2, "cluster");
    assert.match(r.stderr, /usage: atvp cluster up/);
    assert.match(r.stderr, /atvp cluster down/);
  });

  test("an unknown cluster subcommand → exit 2 naming it", async () => {
    const r = await atvp(["cluster", "sideways"]);
    exited(r, 2, "cluster sideways");
    assert.match(r.stderr, /unknown subcommand "sideways"/);
  });

  test("cluster up: bad --workers, --allow-root, --threads, unknown flags name the flag", async () => {
    const dir = join(tmp.path, "flags");
    for (const [args, pattern] of [
      [["--workers", "0"], /\[INVALID_ARGUMENT\] --workers: must be at least 1/],
      [["--workers", "two"], /\[INVALID_ARGUMENT\] --workers: expects a number/],
      [["--allow-root", join(tmp.path, "no-such-root")], /\[INVALID_ARGUMENT\] --allow-root: .*no-such-root is not an existing directory/],
      [["--threads", "0"], /\[INVALID_ARGUMENT\] --threads: must be at least 1/],
      [["--ready-timeout=-1"], /\[INVALID_ARGUMENT\] --ready-timeout: /],
      [["--frobnicate"], /\[INVALID_ARGUMENT\] arguments: .*frobnicate/],
    ] as [string[], RegExp][]) {
      const r = await atvp(["cluster", "up", "--dir", dir, ...args]);
      exited(r, 1, args.join(" "));
      assert.match(r.stderr, pattern);
    }
    assert.equal(existsSync(dir), false, "nothing is created when the flags are wrong");
  });

  test("submit without --coordinator and without cluster.json names both", async () => {
    const r = await atvp(["submit", "--model", "m.onnx", "--calib", "c.jsonl", "--out", "o", "--cluster-dir", join(tmp.path, "none")]);
    exited(r, 1, "submit");
    assert.match(r.stderr, /\[ARGUMENTS\] --coordinator: not given, and .*none\/cluster\.json does not exist/);
  });

  test("submit checks the job flags before connecting: bad sparsity, missing model, worker settings", async () => {
    const base = ["submit", "--coordinator", "127.0.0.1:1", "--calib", "c.jsonl", "--out", "o"];
    for (const [args, pattern] of [
      [["--model", "m.onnx", "--sparsity", "1.5"], /\[INVALID_ARGUMENT\] sparsity: must be in \[0, 1\)/],
      [["--sparsity", "0.5"], /\[INVALID_ARGUMENT\] --model: is required/],
      [["--model", "m.onnx", "--method", "obs"], /\[INVALID_ARGUMENT\] method: /],
      [["--model", "m.onnx", "--threads", "4"], /\[INVALID_ARGUMENT\] --threads: is a worker setting/],
      [["--model", "m.onnx", "--device", "cuda"], /\[INVALID_ARGUMENT\] --device: is a worker setting/],
      [["--model", "m.onnx", "--workers=-1"], /\[INVALID_ARGUMENT\] --workers: must be >= 0/],
      [["--model", "m.onnx", "--tls-cert", "c.pem"], /\[ARGUMENTS\] --tls-cert and --tls-key: give both/],
    ] as [string[], RegExp][]) {
      const r = await atvp([...base, ...args]);
      exited(r, 1, args.join(" "));
      assert.match(r.stderr, pattern);
    }
  });

  test("status, watch and cancel need exactly one job id", async () => {
    for (const command of ["status", "watch", "cancel"]) {
      const r = await atvp([command, "--coordinator", "127.0.0.1:1"]);
      exited(r, 1, command);
      assert.match(r.stderr, new RegExp(`\\[INVALID_ARGUMENT\\] JOB: atvp ${command} takes one job id`));
    }
  });

  test("an unreachable coordinator → UNAVAILABLE naming its address", async () => {
    const r = await atvp(["status", "job-x", "--coordinator", "127.0.0.1:1"]);
    exited(r, 1, "status");
    assert.match(r.stderr, /\[UNAVAILABLE\] GetJob job-x \(coordinator 127\.0\.0\.1:1\): .*is the coordinator running/);
  });

  test("the usage lists the cluster commands, calib and eval", async () => {
    const r = await atvp(["help"]);
    exited(r, 0, "help");
    for (const c of ["cluster up", "cluster down", "submit", "status", "watch", "cancel", "calib", "eval"]) assert.ok(r.stdout.includes(c), c);
    assert.doesNotMatch(r.stdout, /not supported yet/);
  });
});

describe("cluster.json", () => {
  test("round-trips, and a missing file says how to start a cluster", () => {
    const dir = join(tmp.path, "cj");
    mkdirSync(dir);
    assert.throws(() => readClusterFile(dir), (e: unknown) => e instanceof CliError && /cluster\.json does not exist.*atvp cluster up --dir/.test(e.message));
    const c = clusterJson({ workers: [{ address: "127.0.0.1:3", pid: 11 }, { address: "localhost:4", pid: 12 }], metrics: { coordinator: 9100, workers: [9101, 9102] }, logs: "/x/logs" });
    writeClusterFile(dir, c);
    assert.deepEqual(readClusterFile(dir), { ...c, allowRoots: undefined, startedAt: undefined });
    const secured = { ...c, insecure: false, tls: { ca: "/c/tls/ca.crt", cert: "/c/tls/client.crt", key: "/c/tls/client.key", serverName: "localhost" }, tokenFile: "/c/token" };
    writeClusterFile(dir, secured);
    assert.deepEqual(readClusterFile(dir), { ...secured, allowRoots: undefined, startedAt: undefined });
  });

  test("malformed JSON and bad fields are named with the file", () => {
    const dir = join(tmp.path, "cj-bad");
    mkdirSync(dir);
    const file = join(dir, "cluster.json");
    const cases: [string, RegExp][] = [
      ["{", /cluster\.json: not valid JSON/],
      ["[]", /cluster\.json: the top level must be an object/],
      [JSON.stringify({ ...clusterJson(), coordinator: "nowhere" }), /cluster\.json: coordinator must be "host:port"/],
      [JSON.stringify({ ...clusterJson(), nats: "http://x" }), /cluster\.json: nats must be a nats:\/\/ URL/],
      [JSON.stringify({ ...clusterJson(), workers: [{ address: "127.0.0.1:3", pid: 1 }, { address: "127.0.0.1:4", pid: "12" }] }), /cluster\.json: workers\[1\]\.pid must be a positive integer pid/],
      [JSON.stringify({ ...clusterJson(), natsPid: 0 }), /cluster\.json: natsPid /],
      [JSON.stringify({ ...clusterJson(), metrics: { coordinator: 1, workers: [70000] } }), /cluster\.json: metrics\.workers\[0\] must be a port number/],
      [JSON.stringify({ ...clusterJson(), insecure: "yes" }), /cluster\.json: insecure must be true or false/],
      [JSON.stringify({ ...clusterJson(), tls: { ca: "/c/ca.crt", cert: 1, key: "/c/k" } }), /cluster\.json: tls\.cert must be a file path/],
      [JSON.stringify({ ...clusterJson(), tokenFile: "" }), /cluster\.json: tokenFile must be a file path/],
    ];
    for (const [text, pattern] of cases) {
      writeFileSync(file, text);
      assert.throws(() => readClusterFile(dir), (e: unknown) => e instanceof CliError && pattern.test(e.message), text);
    }
  });
});

describe("cluster down", () => {
  test("a cluster whose processes are all gone: exit 0, reports them gone, removes cluster.json", async () => {
    const dir = join(tmp.path, "down-dead");
    mkdirSync(dir);
    const [a, b, c] = [await deadPid(), await deadPid(), await deadPid()];
    writeClusterFile(dir, clusterJson({ coordinatorPid: a, workers: [{ address: "127.0.0.1:3", pid: b }], natsPid: c }));
    const r = await atvp(["cluster", "down", "--dir", dir]);
    exited(r, 0, "cluster down");
    const summary = JSON.parse(r.stdout) as { gone: number[]; terminated: number[]; killed: number[] };
    assert.deepEqual(summary.gone.sort(), [a, b, c].sort());
    assert.deepEqual(summary.terminated, []);
    assert.equal(existsSync(join(dir, "cluster.json")), false);
  });

  test("without cluster.json: exit 1 naming the file", async () => {
    const r = await atvp(["cluster", "down", "--dir", join(tmp.path, "down-none")]);
    exited(r, 1, "cluster down");
    assert.match(r.stderr, /\[CLUSTER\] .*down-none\/cluster\.json does not exist/);
  });

  test("stops the recorded services (SIGTERM, then SIGKILL for one that ignores it) and leaves reused pids alone", async () => {
    const dir = join(tmp.path, "down-live");
    mkdirSync(dir);
    const coordinator = fakeService("dist/services/coordinator/src/main.js");
    const stubborn = fakeService("dist/services/worker/src/main.js", true);
    const nats = fakeService("/usr/sbin/nats-server");
    // A pid recorded for a worker that now belongs to some other program.
    const stranger = spawn("sleep", ["60"], { stdio: "ignore" });
    children.push(stranger);
    await new Promise((r) => setTimeout(r, 300)); // let the SIGTERM handler install
    writeClusterFile(dir, clusterJson({
      coordinatorPid: coordinator.pid!, natsPid: nats.pid!,
      workers: [{ address: "127.0.0.1:3", pid: stubborn.pid! }, { address: "127.0.0.1:4", pid: stranger.pid! }],
      metrics: { coordinator: 0, workers: [0, 0] },
    }));
    const r = await atvp(["cluster", "down", "--dir", dir, "--timeout", "1"]);
    exited(r, 0, "cluster down");
    const summary = JSON.parse(r.stdout) as { terminated: number[]; killed: number[]; skipped: { pid: number }[] };
    assert.deepEqual(summary.terminated.sort(), [coordinator.pid!, nats.pid!].sort());
    assert.deepEqual(summary.killed, [stubborn.pid!]);
    assert.deepEqual(summary.skipped.map((s) => s.pid), [stranger.pid!]);
    assert.match(r.stderr, new RegExp(`pid ${stranger.pid} is no longer the worker 1`));
    assert.ok(alive(stranger.pid!), "the unrelated process still runs");
    assert.equal(existsSync(join(dir, "cluster.json")), false);
  });
});

describe("cluster up", () => {
  test("nats-server missing from PATH → a clear error with the install command, nothing started", async () => {
    const emptyBin = join(tmp.path, "empty-bin");
    mkdirSync(emptyBin);
    const dir = join(tmp.path, "up-no-nats");
    const r = await atvp(["cluster", "up", "--workers", "1", "--dir", dir], { env: baseEnv({ PATH: emptyBin }) });
    exited(r, 1, "cluster up");
    assert.match(r.stderr, /\[CLUSTER\] nats-server not found in PATH.*install nats-server: apt-get install -y nats-server/);
    assert.equal(existsSync(dir), false);
  });

  test("openssl missing from PATH → a clear error naming --insecure, nothing started or written", async () => {
    const natsOnly = join(tmp.path, "nats-only-bin");
    mkdirSync(natsOnly);
    const nats = spawnSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8" }).stdout.trim();
    symlinkSync(nats, join(natsOnly, "nats-server"));
    const dir = join(tmp.path, "up-no-openssl");
    const r = await atvp(["cluster", "up", "--workers", "1", "--dir", dir], { env: baseEnv({ PATH: natsOnly }) });
    exited(r, 1, "cluster up");
    assert.match(r.stderr, /\[CLUSTER\] openssl not found in PATH: .*install it .*or start an unauthenticated cluster with --insecure/);
    assert.equal(existsSync(dir), false);
  });

  test("refuses a directory whose recorded cluster still runs", async () => {
    const dir = join(tmp.path, "up-busy");
    mkdirSync(dir);
    const coordinator = fakeService("dist/services/coordinator/src/main.js");
    await new Promise((r) => setTimeout(r, 100));
    writeClusterFile(dir, clusterJson({ coordinatorPid: coordinator.pid! }));
    const r = await atvp(["cluster", "up", "--dir", dir]);
    exited(r, 1, "cluster up");
    assert.match(r.stderr, new RegExp(`a cluster is already running from .*up-busy \\(coordinator 127\\.0\\.0\\.1:1, pids ${coordinator.pid}\\); stop it first: atvp cluster down --dir`));
    coordinator.kill("SIGKILL");
  });
});

/** A JobService with canned jobs and event histories; it records what was submitted. */
class FakeCoordinator {
  readonly jobs = new Map<string, { job: Job; events: JobEvent[]; dropAfter?: number }>();
  readonly submitted: JobSpec[] = [];
  /** the outcome of the next submitted job */
  nextEvents: (id: string) => JobEvent[] = (id) => [stateEvent(id, JobState.PENDING), stateEvent(id, JobState.SUCCEEDED)];
  private server = new grpc.Server();
  address = "";

  constructor(private readonly token?: string) {}

  async start(): Promise<void> {
    addService(this.server, JobService, {
      submitJob: async (req, call) => {
        requireBearer(call, this.token);
        const id = `job-${this.submitted.length + 1}`;
        this.submitted.push(req.spec!);
        const job = create(JobSchema, { id, spec: req.spec, state: JobState.PENDING, blocksTotal: 4 });
        this.jobs.set(id, { job, events: this.nextEvents(id) });
        return { job };
      },
      getJob: async (req, call) => {
        requireBearer(call, this.token);
        return this.get(req.id).job;
      },
      listJobs: async () => ({ jobs: [...this.jobs.values()].map((j) => j.job) }),
      cancelJob: async (req, call) => {
        requireBearer(call, this.token);
        const j = this.get(req.id);
        j.job.state = JobState.CANCELLED;
        j.job.reason = req.reason || "cancelled by request";
        return j.job;
      },
      watchJob: async (req, call) => {
        requireBearer(call, this.token);
        const j = this.get(req.id);
        for (const [i, e] of j.events.entries()) {
          // A coordinator going away mid-stream, once: the client sees UNAVAILABLE. (Emitted on
          // the call rather than thrown: the adapter's destroy() path sends no status.)
          if (j.dropAfter === i) {
            j.dropAfter = undefined;
            call.emit("error", Object.assign(new Error("coordinator restarting"), { code: grpc.status.UNAVAILABLE, details: "coordinator restarting" }));
            return;
          }
          await writeMessage(call, e);
        }
      },
    });
    const port = await new Promise<number>((resolve, reject) => this.server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    this.address = `127.0.0.1:${port}`;
  }

  private get(id: string): { job: Job; events: JobEvent[]; dropAfter?: number } {
    const j = this.jobs.get(id);
    if (!j) throw new RpcError(grpc.status.NOT_FOUND, `job ${id} not found`);
    return j;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

function stateEvent(id: string, state: JobState, reason = ""): JobEvent {
  return create(JobEventSchema, { jobId: id, timeUnixMs: 1000n, event: { case: "stateChanged", value: { state, reason } } });
}

function blockEvents(id: string, block: number): JobEvent[] {
  return [
    create(JobEventSchema, { jobId: id, timeUnixMs: 1001n, event: { case: "blockStarted", value: { block, label: `layers.${block}`, worker: "w0" } } }),
    create(JobEventSchema, { jobId: id, timeUnixMs: 1002n, event: { case: "blockFinished", value: { block, label: `layers.${block}`, worker: "w0", seconds: 0.5, cosDistAvg: 0.25, k: [3, 4], pruned: 50n, params: 100n } } }),
  ];
}

describe("submit, status, watch, cancel (fake coordinator)", () => {
  const fake = new FakeCoordinator();
  before(() => fake.start());
  after(() => fake.stop());
  const job = ["--model", "m/model.onnx", "--calib", "m/calib.jsonl", "--out", "pruned", "--method", "wanda", "--sparsity", "0.4"];

  test("submit prints the job id alone; --coordinator sends the paths as given, with every job field", async () => {
    const r = await atvp(["submit", "--coordinator", fake.address, ...job, "--pattern", "unstructured", "--alpha", "2", "--nsamples", "8", "--seed", "5", "--include", "q_proj", "--workers", "2"]);
    exited(r, 0, "submit");
    assert.equal(r.stdout, "job-1\n");
    const spec = fake.submitted.at(-1)!;
    assert.equal(spec.model, "m/model.onnx");
    assert.equal(spec.calib, "m/calib.jsonl");
    assert.equal(spec.out, "pruned");
    assert.equal(spec.method, "wanda");
    assert.equal(spec.sparsity, 0.4);
    assert.equal(spec.alpha, 2);
    assert.equal(spec.nsamples, 8);
    assert.equal(spec.seed, 5n);
    assert.deepEqual(spec.include, ["q_proj"]);
    assert.equal(spec.workers, 2);
    assert.equal(spec.propagation, "sequential");
  });

  test("through --cluster-dir the coordinator comes from cluster.json and relative paths are made absolute", async () => {
    const dir = join(tmp.path, "local");
    mkdirSync(dir);
    writeClusterFile(dir, clusterJson({ coordinator: fake.address }));
    const r = await atvp(["submit", "--cluster-dir", dir, ...job], { cwd: tmp.path });
    exited(r, 0, "submit");
    assert.match(r.stdout, /^job-\d+\n$/);
    const spec = fake.submitted.at(-1)!;
    assert.equal(spec.model, join(tmp.path, "m/model.onnx"));
    assert.equal(spec.out, join(tmp.path, "pruned"));
  });

  test("submit --wait: exit 0 when the job SUCCEEDED", async () => {
    fake.nextEvents = (id) => [stateEvent(id, JobState.PENDING), stateEvent(id, JobState.RUNNING), ...blockEvents(id, 0), stateEvent(id, JobState.SUCCEEDED)];
    const r = await atvp(["submit", "--coordinator", fake.address, ...job, "--wait"]);
    exited(r, 0, "submit --wait");
    const [first, ...rest] = r.stdout.split("\n");
    assert.match(first!, /^job-\d+$/);
    assert.deepEqual(rest, [""], "--wait prints nothing but the id on stdout");
    assert.match(r.stderr, new RegExp(`job ${first} SUCCEEDED`));
  });

  test("submit --wait: exit 1 with the reason on stderr when the job FAILED or was CANCELLED", async () => {
    fake.nextEvents = (id) => [stateEvent(id, JobState.RUNNING), stateEvent(id, JobState.FAILED, "worker 127.0.0.1:9 died 3 times")];
    const failed = await atvp(["submit", "--coordinator", fake.address, ...job, "--wait"]);
    exited(failed, 1, "submit --wait (failed)");
    assert.match(failed.stderr, /job job-\d+ FAILED: worker 127\.0\.0\.1:9 died 3 times/);
    fake.nextEvents = (id) => [stateEvent(id, JobState.CANCELLED, "cancelled by request")];
    const cancelled = await atvp(["submit", "--coordinator", fake.address, ...job, "--wait"]);
    exited(cancelled, 1, "submit --wait (cancelled)");
    assert.match(cancelled.stderr, /CANCELLED: cancelled by request/);
  });

  test("submit --watch without a terminal: the id, then one JSON line per event", async () => {
    fake.nextEvents = (id) => [stateEvent(id, JobState.RUNNING), ...blockEvents(id, 0), ...blockEvents(id, 1), stateEvent(id, JobState.SUCCEEDED)];
    const r = await atvp(["submit", "--coordinator", fake.address, ...job, "--watch"]);
    exited(r, 0, "submit --watch");
    const [id, ...lines] = r.stdout.trim().split("\n");
    const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(events.map((e) => e["type"]), ["state_changed", "block_started", "block_finished", "block_started", "block_finished", "state_changed"]);
    assert.equal(events[0]!["jobId"], id);
    assert.equal(events[0]!["state"], "RUNNING");
    assert.deepEqual({ ...events[2], jobId: undefined }, {
      type: "block_finished", jobId: undefined, timeUnixMs: 1002, block: 0, label: "layers.0", worker: "w0", seconds: 0.5, tokensPerSecond: 0, cosDistAvg: 0.25, k: [3, 4], pruned: 50, params: 100,
    });
    assert.equal(events.at(-1)!["state"], "SUCCEEDED");
  });

  test("status --json has state, blocksDone, blocksTotal and reason; plain status is one readable line", async () => {
    fake.jobs.set("job-st", { job: create(JobSchema, { id: "job-st", state: JobState.RUNNING, blocksDone: 1, blocksTotal: 4, stages: 1, replicas: 1, shards: [{ index: 0, firstBlock: 0, endBlock: 4, worker: "w0", blocksDone: 1, attempts: 1 }] }), events: [] });
    const r = await atvp(["status", "job-st", "--coordinator", fake.address, "--json"]);
    exited(r, 0, "status --json");
    const s = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(s["state"], "RUNNING");
    assert.equal(s["blocksDone"], 1);
    assert.equal(s["blocksTotal"], 4);
    assert.equal(s["reason"], "");
    assert.deepEqual([s["stages"], s["replicas"]], [1, 1]);
    assert.deepEqual(s["shards"], [{ index: 0, stage: 0, replica: 0, firstBlock: 0, endBlock: 4, worker: "w0", blocksDone: 1, attempts: 1 }]);
    const plain = await atvp(["status", "job-st", "--coordinator", fake.address]);
    exited(plain, 0, "status");
    assert.match(plain.stdout, /^job-st RUNNING 1\/4 blocks\n  grid: 1 stage\(s\) x 1 replica\(s\)\n  shard 0: blocks \[0, 4\) on w0, 1 done, 1 attempt\(s\)\n$/);
  });

  test("status of an unknown job → NOT_FOUND naming it, exit 1", async () => {
    const r = await atvp(["status", "job-nope", "--coordinator", fake.address]);
    exited(r, 1, "status");
    assert.match(r.stderr, /\[NOT_FOUND\] GetJob job-nope \(coordinator 127\.0\.0\.1:\d+\): job job-nope not found/);
  });

  test("watch replays the events and exits like --wait", async () => {
    fake.jobs.set("job-w", { job: create(JobSchema, { id: "job-w", state: JobState.FAILED, reason: "NaN in layers.1" }), events: [stateEvent("job-w", JobState.RUNNING), ...blockEvents("job-w", 0), stateEvent("job-w", JobState.FAILED, "NaN in layers.1")] });
    const r = await atvp(["watch", "job-w", "--coordinator", fake.address]);
    exited(r, 1, "watch");
    assert.equal(r.stdout.trim().split("\n").length, 4);
    assert.match(r.stderr, /job job-w FAILED: NaN in layers\.1/);
  });

  test("watch re-attaches after the coordinator drops the stream, showing each event once", async () => {
    const events = [stateEvent("job-r", JobState.RUNNING), ...blockEvents("job-r", 0), ...blockEvents("job-r", 1), stateEvent("job-r", JobState.SUCCEEDED)];
    fake.jobs.set("job-r", { job: create(JobSchema, { id: "job-r", state: JobState.SUCCEEDED }), events, dropAfter: 3 });
    const r = await atvp(["watch", "job-r", "--coordinator", fake.address]);
    exited(r, 0, "watch");
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as { type: string; block?: number });
    assert.deepEqual(lines.map((l) => `${l.type}${l.block ?? ""}`), ["state_changed", "block_started0", "block_finished0", "block_started1", "block_finished1", "state_changed"]);
  });

  test("watch on an unreachable coordinator fails at once instead of waiting for it; an unknown job is NOT_FOUND", async () => {
    const t0 = Date.now();
    const r = await atvp(["watch", "job-x", "--coordinator", "127.0.0.1:1"]);
    exited(r, 1, "watch");
    assert.match(r.stderr, /\[UNAVAILABLE\] GetJob job-x \(coordinator 127\.0\.0\.1:1\)/);
    const unknown = await atvp(["watch", "job-nope", "--coordinator", fake.address]);
    exited(unknown, 1, "watch");
    assert.match(unknown.stderr, /\[NOT_FOUND\] GetJob job-nope .*job job-nope not found/);
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
  });

  test("watch: a stream that ends while the job still runs is an error, not a success", async () => {
    fake.jobs.set("job-cut", { job: create(JobSchema, { id: "job-cut", state: JobState.RUNNING }), events: [stateEvent("job-cut", JobState.RUNNING)] });
    const r = await atvp(["watch", "job-cut", "--coordinator", fake.address]);
    exited(r, 1, "watch");
    assert.match(r.stderr, /\[WATCH\] the event stream of job job-cut ended while it is RUNNING; run atvp watch job-cut/);
  });

  test("cancel prints the new state and passes the reason", async () => {
    fake.jobs.set("job-c", { job: create(JobSchema, { id: "job-c", state: JobState.RUNNING }), events: [] });
    const r = await atvp(["cancel", "job-c", "--coordinator", fake.address, "--reason", "wrong sparsity"]);
    exited(r, 0, "cancel");
    assert.equal(r.stdout, "job-c CANCELLED: wrong sparsity\n");
  });
});

describe("bearer token (fake coordinator that requires one)", () => {
  const fake = new FakeCoordinator("tok-123");
  before(() => fake.start());
  after(() => fake.stop());
  const job = ["--model", "m.onnx", "--method", "magnitude", "--out", "o"];

  test("without a token → UNAUTHENTICATED with a hint; --token or ATVP_TOKEN → accepted", async () => {
    const refused = await atvp(["submit", "--coordinator", fake.address, ...job]);
    exited(refused, 1, "submit without token");
    assert.match(refused.stderr, /\[UNAUTHENTICATED\] SubmitJob .*missing or invalid bearer token.*--token or ATVP_TOKEN/);
    const wrong = await atvp(["submit", "--coordinator", fake.address, ...job, "--token", "nope"]);
    exited(wrong, 1, "submit with a wrong token");
    const flag = await atvp(["submit", "--coordinator", fake.address, ...job, "--token", "tok-123"]);
    exited(flag, 0, "submit --token");
    const env = await atvp(["status", flag.stdout.trim(), "--coordinator", fake.address], { env: baseEnv({ ATVP_TOKEN: "tok-123" }) });
    exited(env, 0, "status with ATVP_TOKEN");
  });
});
