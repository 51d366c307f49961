/**
 * `cluster.json`: what `atvp cluster up` started (addresses, pids, metrics ports), so that
 * `cluster down` can stop exactly those processes and `submit`/`status`/... find the coordinator
 * without flags. Read back with checks that name the file and the field, since people edit it.
 */
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CliError } from "./cliError.js";

/** Where `cluster up` keeps its state when --dir / --cluster-dir is not given (git-ignored). */
export const DEFAULT_CLUSTER_DIR = ".work/cluster";
export const CLUSTER_FILE = "cluster.json";

export interface ClusterWorker {
  address: string;
  pid: number;
}

export interface ClusterFile {
  /** host:port of the coordinator's JobService */
  coordinator: string;
  /** nats://host:port */
  nats: string;
  workers: ClusterWorker[];
  coordinatorPid: number;
  natsPid: number;
  /** HTTP ports serving /metrics, /healthz, /readyz */
  metrics: { coordinator: number; workers: number[] };
  /** absolute paths, for people reading the file */
  logs?: string;
  allowRoots?: string[];
  startedAt?: string;
  /**
   * true: started with --insecure (plaintext, no token, anyone on this machine may call the
   * services). Absent or false: mutual TLS and a token everywhere, the CLI's below.
   */
  insecure?: boolean;
  /**
   * the CLI's client certificate, its key and the cluster CA (absolute paths), and the name the
   * services' certificates carry (they listen on a loopback IP)
   */
  tls?: { ca: string; cert: string; key: string; serverName?: string };
  /** file holding the token every service asks for (absolute path, mode 0600) */
  tokenFile?: string;
}

export function clusterFilePath(dir: string): string {
  return join(dir, CLUSTER_FILE);
}

export function writeClusterFile(dir: string, cluster: ClusterFile): string {
  const path = clusterFilePath(dir);
  // Through a rename so a reader never sees half a file.
  writeFileSync(`${path}.tmp`, JSON.stringify(cluster, null, 2) + "\n");
  renameSync(`${path}.tmp`, path);
  return path;
}

export function removeClusterFile(dir: string): void {
  rmSync(clusterFilePath(dir), { force: true });
}

export function hasClusterFile(dir: string): boolean {
  return existsSync(clusterFilePath(dir));
}

function bad(path: string, field: string, what: string): CliError {
  return new CliError("CLUSTER", `${path}: ${field} ${what}`);
}

function address(v: unknown, path: string, field: string): string {
  if (typeof v !== "string" || !/^.+:\d+$/.test(v)) throw bad(path, field, `must be "host:port", got ${JSON.stringify(v)}`);
  return v;
}

function pid(v: unknown, path: string, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) throw bad(path, field, `must be a positive integer pid, got ${JSON.stringify(v)}`);
  return v;
}

function port(v: unknown, path: string, field: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 65535) throw bad(path, field, `must be a port number, got ${JSON.stringify(v)}`);
  return v;
}

export function readClusterFile(dir: string): ClusterFile {
  const path = clusterFilePath(dir);
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new CliError("CLUSTER", `${path} does not exist: no cluster was started with --dir ${dir} (atvp cluster up --dir ${dir})`);
    throw new CliError("CLUSTER", `${path}: cannot read (${code ?? (err as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CliError("CLUSTER", `${path}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw bad(path, "the top level", "must be an object");
  const o = raw as Record<string, unknown>;
  if (typeof o["nats"] !== "string" || !o["nats"].startsWith("nats://")) throw bad(path, "nats", `must be a nats:// URL, got ${JSON.stringify(o["nats"])}`);
  if (!Array.isArray(o["workers"])) throw bad(path, "workers", "must be an array");
  const workers = (o["workers"] as unknown[]).map((w, i) => {
    if (typeof w !== "object" || w === null) throw bad(path, `workers[${i}]`, "must be an object");
    const wo = w as Record<string, unknown>;
    return { address: address(wo["address"], path, `workers[${i}].address`), pid: pid(wo["pid"], path, `workers[${i}].pid`) };
  });
  const m = o["metrics"];
  if (typeof m !== "object" || m === null) throw bad(path, "metrics", "must be an object");
  const mo = m as Record<string, unknown>;
  const workerPorts = mo["workers"];
  if (!Array.isArray(workerPorts)) throw bad(path, "metrics.workers", "must be an array");
  return {
    coordinator: address(o["coordinator"], path, "coordinator"),
    nats: o["nats"],
    workers,
    coordinatorPid: pid(o["coordinatorPid"], path, "coordinatorPid"),
    natsPid: pid(o["natsPid"], path, "natsPid"),
    metrics: {
      coordinator: port(mo["coordinator"], path, "metrics.coordinator"),
      workers: workerPorts.map((p: unknown, i) => port(p, path, `metrics.workers[${i}]`)),
    },
    logs: typeof o["logs"] === "string" ? o["logs"] : undefined,
    allowRoots: Array.isArray(o["allowRoots"]) ? (o["allowRoots"] as unknown[]).filter((r): r is string => typeof r === "string") : undefined,
    startedAt: typeof o["startedAt"] === "string" ? o["startedAt"] : undefined,
    ...securityFields(o, path),
  };
}

function filePath(v: unknown, path: string, field: string): string {
  if (typeof v !== "string" || v === "") throw bad(path, field, `must be a file path, got ${JSON.stringify(v)}`);
  return v;
}

/** insecure, tls and tokenFile, present only when the file has them (older files have none). */
function securityFields(o: Record<string, unknown>, path: string): Pick<ClusterFile, "insecure" | "tls" | "tokenFile"> {
  const out: Pick<ClusterFile, "insecure" | "tls" | "tokenFile"> = {};
  if (o["insecure"] !== undefined) {
    if (typeof o["insecure"] !== "boolean") throw bad(path, "insecure", `must be true or false, got ${JSON.stringify(o["insecure"])}`);
    out.insecure = o["insecure"];
  }
  if (o["tls"] !== undefined) {
    const t = o["tls"];
    if (typeof t !== "object" || t === null) throw bad(path, "tls", "must be an object");
    const to = t as Record<string, unknown>;
    out.tls = { ca: filePath(to["ca"], path, "tls.ca"), cert: filePath(to["cert"], path, "tls.cert"), key: filePath(to["key"], path, "tls.key") };
    if (typeof to["serverName"] === "string" && to["serverName"] !== "") out.tls.serverName = to["serverName"];
  }
  if (o["tokenFile"] !== undefined) out.tokenFile = filePath(o["tokenFile"], path, "tokenFile");
  return out;
}
