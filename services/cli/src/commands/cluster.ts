/**
 * `atvp cluster up|down`: the whole cluster (nats-server with JetStream, N workers, the
 * coordinator) as background processes on this machine, for development and single-host runs.
 * `up` returns once every service has reported ready and records them in DIR/cluster.json;
 * `down` stops exactly those processes.
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidArgumentError } from "../../../core/src/errors.js";
import { int, list, num, parse, str, type Options } from "../args.js";
import { CliError } from "../cliError.js";
import { clusterFilePath, DEFAULT_CLUSTER_DIR, hasClusterFile, readClusterFile, removeClusterFile, writeClusterFile, type ClusterFile } from "../clusterFile.js";
import {
  classifyPid, findExecutable, freePort, isAlive, startDetached, stopPids, waitForNats, waitForReadyLine, type ReadyLine, type Started,
} from "../localProcesses.js";

const USAGE = `usage: atvp cluster up [--workers N] [--dir D] [--allow-root PATH]... [--threads T] [--ready-timeout S] [--stall-timeout S] [--keep-work]
       atvp cluster down [--dir D] [--timeout S]
(D defaults to ${DEFAULT_CLUSTER_DIR})
`;

/** dist/ of this build: the service entry points sit beside the CLI. */
const DIST = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const COORDINATOR_MAIN = join(DIST, "services/coordinator/src/main.js");
const WORKER_MAIN = join(DIST, "services/worker/src/main.js");
/** What a pid's command line must contain to still be the process cluster.json recorded. */
const MARKERS = { coordinator: "services/coordinator/src/main.js", worker: "services/worker/src/main.js", nats: "nats-server" } as const;

const HOST = "127.0.0.1";
/** Seconds a process gets after SIGTERM when a failed `up` cleans up. */
const CLEANUP_GRACE_MS = 5000;

const UP_OPTIONS: Options = {
  workers: { type: "string" },
  dir: { type: "string" },
  "allow-root": { type: "string", multiple: true },
  threads: { type: "string" },
  "ready-timeout": { type: "string" },
  "stall-timeout": { type: "string" },
  "keep-work": { type: "boolean", default: false },
};

const DOWN_OPTIONS: Options = {
  dir: { type: "string" },
  timeout: { type: "string" },
};

export async function clusterCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === "up") return clusterUp(rest);
  if (sub === "down") return clusterDown(rest);
  process.stderr.write(sub === undefined ? USAGE : `atvp cluster: unknown subcommand ${JSON.stringify(sub)}\n${USAGE}`);
  return 2;
}

export interface UpSettings {
  workers: number;
  dir: string;
  allowRoots: string[];
  threads: number;
  readyTimeoutMs: number;
  /** the coordinator's flags for stalled workers and work folders (passed through) */
  coordinatorFlags: string[];
}

export function upSettings(values: Record<string, unknown>): UpSettings {
  const workers = int(values, "workers") ?? 2;
  if (workers < 1) throw new InvalidArgumentError("--workers", `must be at least 1, got ${workers}`);
  const given = list(values, "allow-root");
  const allowRoots = (given.length > 0 ? given : [process.cwd()]).map((r) => resolve(r));
  for (const root of allowRoots) {
    if (!existsSync(root) || !statSync(root).isDirectory()) throw new InvalidArgumentError("--allow-root", `${root} is not an existing directory`);
  }
  // Workers share the machine: by default they split its cores instead of each taking all.
  const threads = int(values, "threads") ?? Math.max(1, Math.floor(availableParallelism() / workers));
  if (threads < 1) throw new InvalidArgumentError("--threads", `must be at least 1, got ${threads}`);
  const readySeconds = num(values, "ready-timeout") ?? 60;
  if (!(readySeconds > 0)) throw new InvalidArgumentError("--ready-timeout", `must be > 0 seconds, got ${readySeconds}`);
  const stallSeconds = num(values, "stall-timeout");
  if (stallSeconds !== undefined && !(stallSeconds > 0)) throw new InvalidArgumentError("--stall-timeout", `must be > 0 seconds, got ${stallSeconds}`);
  const coordinatorFlags = [...(stallSeconds === undefined ? [] : ["--stall-timeout", String(stallSeconds)]), ...(values["keep-work"] === true ? ["--keep-work"] : [])];
  return { workers, dir: resolve(str(values, "dir") ?? DEFAULT_CLUSTER_DIR), allowRoots, threads, readyTimeoutMs: readySeconds * 1000, coordinatorFlags };
}

/** A cluster.json whose processes still run means this directory is taken. */
function refuseRunning(dir: string): void {
  if (!hasClusterFile(dir)) return;
  let cluster: ClusterFile;
  try {
    cluster = readClusterFile(dir);
  } catch (err) {
    throw new CliError("CLUSTER", `${(err as Error).message}; remove ${clusterFilePath(dir)} if no cluster runs from ${dir}`);
  }
  const running = ownedPids(cluster).filter((p) => classifyPid(p.pid, p.marker) === "ours");
  if (running.length > 0) {
    throw new CliError("CLUSTER", `a cluster is already running from ${dir} (coordinator ${cluster.coordinator}, pids ${running.map((p) => p.pid).join(", ")}); stop it first: atvp cluster down --dir ${dir}`);
  }
  process.stderr.write(`atvp cluster up: replacing ${clusterFilePath(dir)} (its processes are gone)\n`);
}

function ownedPids(c: ClusterFile): { pid: number; marker: string; role: string }[] {
  return [
    { pid: c.coordinatorPid, marker: MARKERS.coordinator, role: "coordinator" },
    ...c.workers.map((w, i) => ({ pid: w.pid, marker: MARKERS.worker, role: `worker ${i} (${w.address})` })),
    { pid: c.natsPid, marker: MARKERS.nats, role: "nats-server" },
  ];
}

/** nats-server on a free port; a port taken between probe and bind makes it exit, so retry. */
async function startNats(bin: string, dir: string, readyMs: number, started: Started[], signal: AbortSignal): Promise<{ port: number; pid: number }> {
  const attempts = 3;
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(HOST);
    if (signal.aborted) throw new CliError("INTERRUPTED", "interrupted before nats-server started");
    const s = startDetached("nats-server", bin, ["-js", "-sd", join(dir, "nats"), "-a", HOST, "-p", String(port)], join(dir, "logs", "nats.log"));
    started.push(s);
    try {
      await waitForNats(s, port, HOST, readyMs, signal);
      return { port, pid: s.pid };
    } catch (err) {
      if (attempt >= attempts || isAlive(s.pid)) throw err;
    }
  }
}

async function startService(name: string, main: string, args: string[], log: string, readyMs: number, started: Started[], signal: AbortSignal): Promise<{ s: Started; ready: ReadyLine }> {
  if (signal.aborted) throw new CliError("INTERRUPTED", `interrupted before ${name} started`);
  const s = startDetached(name, process.execPath, [main, ...args], log);
  started.push(s);
  return { s, ready: await waitForReadyLine(s, readyMs, signal) };
}

async function clusterUp(argv: string[]): Promise<number> {
  const settings = upSettings(parse(argv, UP_OPTIONS).values);
  const { dir } = settings;
  refuseRunning(dir);
  const natsBin = findExecutable("nats-server");
  if (!natsBin) throw new CliError("CLUSTER", "nats-server not found in PATH (the cluster keeps job state in NATS JetStream); install nats-server: apt-get install -y nats-server");
  for (const entry of [WORKER_MAIN, COORDINATOR_MAIN]) {
    if (!existsSync(entry)) throw new CliError("CLUSTER", `${entry} is missing; build first: npx tsc -p tsconfig.json (make build)`);
  }
  const logs = join(dir, "logs");
  for (const d of [dir, logs, join(dir, "nats"), join(dir, "jobs")]) mkdirSync(d, { recursive: true });

  const started: Started[] = [];
  // The services run in their own process groups, so a Ctrl-C here does not reach them: the
  // waits below stop on it and the processes started so far are stopped instead of orphaned.
  const interrupt = new AbortController();
  const interrupted = (sig: NodeJS.Signals) => interrupt.abort(sig);
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  try {
    const nats = await startNats(natsBin, dir, settings.readyTimeoutMs, started, interrupt.signal);
    const natsUrl = `nats://${HOST}:${nats.port}`;
    const workers = await Promise.all(Array.from({ length: settings.workers }, (_, i) =>
      startService(`worker ${i}`, WORKER_MAIN, ["--listen", `${HOST}:0`, "--threads", String(settings.threads), "--metrics-port", "0"],
        join(logs, `worker-${i}.log`), settings.readyTimeoutMs, started, interrupt.signal)));
    const coordinator = await startService("coordinator", COORDINATOR_MAIN, [
      "--listen", `${HOST}:0`, "--nats", natsUrl,
      ...workers.flatMap((w) => ["--worker", w.ready.address]),
      "--work-root", join(dir, "jobs"),
      ...settings.allowRoots.flatMap((r) => ["--allow-root", r]),
      "--metrics-port", "0",
      ...settings.coordinatorFlags,
    ], join(logs, "coordinator.log"), settings.readyTimeoutMs, started, interrupt.signal);

    const cluster: ClusterFile = {
      coordinator: coordinator.ready.address,
      nats: natsUrl,
      workers: workers.map((w) => ({ address: w.ready.address, pid: w.s.pid })),
      coordinatorPid: coordinator.s.pid,
      natsPid: nats.pid,
      metrics: { coordinator: coordinator.ready.metricsPort, workers: workers.map((w) => w.ready.metricsPort) },
      logs,
      allowRoots: settings.allowRoots,
      startedAt: new Date().toISOString(),
    };
    const file = writeClusterFile(dir, cluster);
    for (const s of started) s.child.unref();
    process.stdout.write(JSON.stringify(cluster) + "\n");
    process.stderr.write(`cluster up: coordinator ${cluster.coordinator}, ${workers.length} worker(s), ${natsUrl}; ${file}; logs in ${logs}; stop with atvp cluster down --dir ${dir}\n`);
    return 0;
  } catch (err) {
    const stopped = await stopPids(started.map((s) => s.pid).reverse(), CLEANUP_GRACE_MS);
    if (!interrupt.signal.aborted) throw err;
    const sig = interrupt.signal.reason as NodeJS.Signals;
    process.stderr.write(`atvp cluster up: ${sig}: stopped the ${stopped.terminated.length + stopped.killed.length} process(es) started so far; logs in ${logs}\n`);
    return sig === "SIGINT" ? 130 : 143;
  } finally {
    process.off("SIGINT", interrupted);
    process.off("SIGTERM", interrupted);
  }
}

interface DownSummary {
  dir: string;
  terminated: number[];
  killed: number[];
  /** already not running */
  gone: number[];
  /** the pid now belongs to another program: left alone */
  skipped: { pid: number; reason: string }[];
  failed: { pid: number; reason: string }[];
}

async function clusterDown(argv: string[]): Promise<number> {
  const { values } = parse(argv, DOWN_OPTIONS);
  const dir = resolve(str(values, "dir") ?? DEFAULT_CLUSTER_DIR);
  const seconds = num(values, "timeout") ?? 10;
  if (!(seconds >= 0)) throw new InvalidArgumentError("--timeout", `must be >= 0 seconds, got ${seconds}`);
  const cluster = readClusterFile(dir);
  const summary: DownSummary = { dir, terminated: [], killed: [], gone: [], skipped: [], failed: [] };
  // The coordinator first (it hands its jobs back to NATS), NATS last (the others need it to stop cleanly).
  const owned = ownedPids(cluster);
  const groups = [owned.filter((p) => p.marker === MARKERS.coordinator), owned.filter((p) => p.marker === MARKERS.worker), owned.filter((p) => p.marker === MARKERS.nats)];
  for (const group of groups) {
    const ours: number[] = [];
    for (const p of group) {
      const state = classifyPid(p.pid, p.marker);
      if (state === "gone") summary.gone.push(p.pid);
      else if (state === "foreign") summary.skipped.push({ pid: p.pid, reason: `pid ${p.pid} is no longer the ${p.role} this cluster started (another program has it now); left alone` });
      else ours.push(p.pid);
    }
    const r = await stopPids(ours, seconds * 1000);
    summary.terminated.push(...r.terminated);
    summary.killed.push(...r.killed);
    summary.failed.push(...r.failed);
  }
  for (const s of summary.skipped) process.stderr.write(`atvp cluster down: ${s.reason}\n`);
  process.stdout.write(JSON.stringify(summary) + "\n");
  if (summary.failed.length > 0) {
    throw new CliError("CLUSTER", `could not stop ${summary.failed.map((f) => `pid ${f.pid} (${f.reason})`).join(", ")}; ${clusterFilePath(dir)} is kept`);
  }
  removeClusterFile(dir);
  process.stderr.write(`cluster down: ${dir}: ${summary.terminated.length} stopped, ${summary.killed.length} killed, ${summary.gone.length} already gone\n`);
  return 0;
}
