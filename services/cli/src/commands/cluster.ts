/**
 * `atvp cluster up|down`: the whole cluster (nats-server with JetStream, N workers, the
 * coordinator) as background processes on this machine, for development and single-host runs.
 * `up` returns once every service has reported ready and records them in DIR/cluster.json;
 * `down` stops exactly those processes.
 *
 * Secure by default: `up` makes the cluster's CA, certificates and token in DIR (clusterPki.ts),
 * every connection is mutual TLS and every call carries the token, and the CLI finds its own
 * credentials through cluster.json. Every service listens on a port chosen here, so a service
 * restarted with the same command line is where cluster.json says, and `down` finds it by that
 * command line even under a new pid.
 */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { InvalidArgumentError } from "../../../core/src/index.js";
import { WORKER_NODE_FLAGS } from "../../../worker/src/index.js";
import { int, list, num, parse, str, type Options } from "../args.js";
import { CliError } from "../cliError.js";
import { clusterFilePath, DEFAULT_CLUSTER_DIR, hasClusterFile, readClusterFile, removeClusterFile, writeClusterFile, type ClusterFile } from "../clusterFile.js";
import {
  classifyPid, findExecutable, findProcesses, freePort, isAlive, startDetached, stopPids, waitForNats, waitForReadyLine, type ReadyLine, type Started,
} from "../localProcesses.js";
import { clientTls, findOpenssl, LOCAL_NAME, makeClusterCredentials, peerName, removeClusterCredentials, type ClusterCredentials } from "../clusterPki.js";

const USAGE = `usage: atvp cluster up [--workers N] [--dir D] [--allow-root PATH]... [--threads T] [--ready-timeout S] [--insecure] [--stall-timeout S] [--keep-work]
       atvp cluster down [--dir D] [--timeout S]
(D defaults to ${DEFAULT_CLUSTER_DIR}; up makes a CA, certificates and a token in D and starts every
service with mutual TLS and the token; --insecure starts them without, for debugging only)
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
  insecure: { type: "boolean", default: false },
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
  /** no TLS, no token */
  insecure: boolean;
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
  return { workers, dir: resolve(str(values, "dir") ?? DEFAULT_CLUSTER_DIR), allowRoots, threads, readyTimeoutMs: readySeconds * 1000, insecure: values["insecure"] === true, coordinatorFlags };
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
  const running = [...ownedPids(cluster).filter((p) => classifyPid(p.pid, p.marker) === "ours"), ...strayPids(dir, cluster)];
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

/**
 * The processes of the cluster in `dir` that cluster.json does not list: services restarted by
 * hand (same command line, new pid), found by their marker and the folder only this cluster uses.
 */
function strayPids(dir: string, cluster: ClusterFile): { pid: number; marker: string; role: string }[] {
  const listed = new Set(ownedPids(cluster).map((p) => p.pid));
  const jobs = join(dir, "jobs");
  return [
    ...findProcesses(MARKERS.coordinator, jobs).map((pid) => ({ pid, marker: MARKERS.coordinator, role: "coordinator (restarted)" })),
    ...findProcesses(MARKERS.worker, jobs).map((pid) => ({ pid, marker: MARKERS.worker, role: "worker (restarted)" })),
    ...findProcesses(MARKERS.nats, join(dir, "nats")).map((pid) => ({ pid, marker: MARKERS.nats, role: "nats-server (restarted)" })),
  ].filter((p) => !listed.has(p.pid));
}

/** Ports for one `up`, none handed out twice (each probe closes its socket, so the OS may repeat one). */
class PortPicker {
  private readonly taken = new Set<number>();

  async next(): Promise<number> {
    for (;;) {
      const port = await freePort(HOST);
      if (!this.taken.has(port)) {
        this.taken.add(port);
        return port;
      }
    }
  }
}

/**
 * Starts a process on `count` free ports and waits until it is ready; another process taking a
 * port between probe and bind makes it exit early, so that is retried on fresh ports.
 */
async function startOnFreePorts<R>(
  name: string, count: number, ports: PortPicker, started: Started[], signal: AbortSignal,
  start: (ports: number[]) => Started, ready: (s: Started, ports: number[]) => Promise<R>,
): Promise<{ s: Started; ports: number[]; ready: R }> {
  const attempts = 3;
  for (let attempt = 1; ; attempt++) {
    const picked: number[] = [];
    for (let i = 0; i < count; i++) picked.push(await ports.next());
    if (signal.aborted) throw new CliError("INTERRUPTED", `interrupted before ${name} started`);
    const s = start(picked);
    started.push(s);
    try {
      return { s, ports: picked, ready: await ready(s, picked) };
    } catch (err) {
      if (attempt >= attempts || signal.aborted || isAlive(s.pid)) throw err;
    }
  }
}

function startNats(bin: string, dir: string, readyMs: number, ports: PortPicker, started: Started[], signal: AbortSignal) {
  return startOnFreePorts("nats-server", 1, ports, started, signal,
    ([port]) => startDetached("nats-server", bin, ["-js", "-sd", join(dir, "nats"), "-a", HOST, "-p", String(port)], join(dir, "logs", "nats.log")),
    (s, [port]) => waitForNats(s, port!, HOST, readyMs, signal));
}

/** A service listening on a fixed gRPC port and a fixed metrics port, run by node with `nodeFlags`. */
function startService(
  name: string, main: string, args: (grpcPort: number, metricsPort: number) => string[], log: string, readyMs: number,
  ports: PortPicker, started: Started[], signal: AbortSignal, nodeFlags: readonly string[] = [],
): Promise<{ s: Started; ready: ReadyLine }> {
  return startOnFreePorts(name, 2, ports, started, signal,
    ([grpcPort, metricsPort]) => startDetached(name, process.execPath, [...nodeFlags, main, ...args(grpcPort!, metricsPort!)], log),
    (s) => waitForReadyLine(s, readyMs, signal));
}

/**
 * The security flags of each service: mutual TLS and the token file, or --insecure. Services
 * dial each other by loopback IP and check the certificates' other name, "localhost" (TLS
 * server names may not be IP addresses).
 */
function securityArgs(c: ClusterCredentials | undefined): { coordinator: string[]; worker: string[] } {
  if (!c) return { coordinator: [], worker: ["--insecure"] };
  return {
    coordinator: [
      "--tls-cert", c.coordinator.cert, "--tls-key", c.coordinator.key, "--tls-ca", c.ca, "--tls-require-client-cert",
      "--worker-tls-cert", c.coordinator.cert, "--worker-tls-key", c.coordinator.key, "--worker-tls-ca", c.ca,
      "--worker-tls-server-name", LOCAL_NAME, "--token-file", c.tokenFile,
    ],
    worker: [
      "--tls-cert", c.worker.cert, "--tls-key", c.worker.key, "--tls-ca", c.ca, "--tls-server-name", LOCAL_NAME, "--token-file", c.tokenFile,
      // The CLI's certificate comes from the same CA: workers take calls from services only.
      "--tls-client-name", peerName("coordinator"), "--tls-client-name", peerName("worker"),
    ],
  };
}

const INSECURE_WARNING = "WARNING: --insecure: no TLS and no token; any process on this machine can submit jobs and call the workers, which read and write files in the allowed roots. For debugging only.";

async function clusterUp(argv: string[]): Promise<number> {
  const settings = upSettings(parse(argv, UP_OPTIONS).values);
  const { dir } = settings;
  refuseRunning(dir);
  const natsBin = findExecutable("nats-server");
  if (!natsBin) throw new CliError("CLUSTER", "nats-server not found in PATH (the cluster keeps job state in NATS JetStream); install nats-server: apt-get install -y nats-server");
  const openssl = settings.insecure ? undefined : findOpenssl();
  for (const entry of [WORKER_MAIN, COORDINATOR_MAIN]) {
    if (!existsSync(entry)) throw new CliError("CLUSTER", `${entry} is missing; build first: npx tsc -p tsconfig.json (make build)`);
  }
  const logs = join(dir, "logs");
  const jobs = join(dir, "jobs");
  for (const d of [dir, logs, join(dir, "nats"), jobs]) mkdirSync(d, { recursive: true });
  if (settings.insecure) {
    process.stderr.write(`atvp cluster up: ${INSECURE_WARNING}\n`);
    removeClusterCredentials(dir);
  }
  const credentials = openssl ? makeClusterCredentials(dir, HOST, openssl) : undefined;
  const security = securityArgs(credentials);

  const started: Started[] = [];
  // The services run in their own process groups, so a Ctrl-C here does not reach them: the
  // waits below stop on it and the processes started so far are stopped instead of orphaned.
  const interrupt = new AbortController();
  const interrupted = (sig: NodeJS.Signals) => interrupt.abort(sig);
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);
  try {
    const ports = new PortPicker();
    const nats = await startNats(natsBin, dir, settings.readyTimeoutMs, ports, started, interrupt.signal);
    const natsUrl = `nats://${HOST}:${nats.ports[0]}`;
    const allowRoots = settings.allowRoots.flatMap((r) => ["--allow-root", r]);
    const workers = await Promise.all(Array.from({ length: settings.workers }, (_, i) =>
      startService(`worker ${i}`, WORKER_MAIN, (port, metrics) => [
        "--listen", `${HOST}:${port}`, "--threads", String(settings.threads), "--metrics-port", String(metrics),
        ...security.worker, ...allowRoots, "--work-root", jobs,
      ], join(logs, `worker-${i}.log`), settings.readyTimeoutMs, ports, started, interrupt.signal, WORKER_NODE_FLAGS)));
    const coordinator = await startService("coordinator", COORDINATOR_MAIN, (port, metrics) => [
      "--listen", `${HOST}:${port}`, "--nats", natsUrl,
      ...workers.flatMap((w) => ["--worker", w.ready.address]),
      "--work-root", jobs,
      ...allowRoots,
      "--metrics-port", String(metrics),
      ...security.coordinator,
      ...settings.coordinatorFlags,
    ], join(logs, "coordinator.log"), settings.readyTimeoutMs, ports, started, interrupt.signal);

    const cluster: ClusterFile = {
      coordinator: coordinator.ready.address,
      nats: natsUrl,
      workers: workers.map((w) => ({ address: w.ready.address, pid: w.s.pid })),
      coordinatorPid: coordinator.s.pid,
      natsPid: nats.s.pid,
      metrics: { coordinator: coordinator.ready.metricsPort, workers: workers.map((w) => w.ready.metricsPort) },
      logs,
      allowRoots: settings.allowRoots,
      startedAt: new Date().toISOString(),
      insecure: settings.insecure,
      ...(credentials ? { tls: clientTls(credentials), tokenFile: credentials.tokenFile } : {}),
    };
    const file = writeClusterFile(dir, cluster);
    for (const s of started) s.child.unref();
    process.stdout.write(JSON.stringify(cluster) + "\n");
    process.stderr.write(`cluster up: coordinator ${cluster.coordinator}, ${workers.length} worker(s), ${natsUrl}; ${settings.insecure ? "INSECURE (no TLS, no token)" : "mutual TLS + token"}; ${file}; logs in ${logs}; stop with atvp cluster down --dir ${dir}\n`);
    if (settings.insecure) process.stderr.write(`atvp cluster up: ${INSECURE_WARNING}\n`);
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
  const owned = [...ownedPids(cluster), ...strayPids(dir, cluster)];
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
