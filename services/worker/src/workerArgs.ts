/**
 * The worker's command-line flags as WorkerOptions (kept apart from main.ts so they can be
 * tested without starting a process).
 */
import { resolve } from "node:path";
import { InvalidArgumentError } from "../../core/src/index.js";
import { type TlsConfig, readTokenFile } from "../../rpc/index.js";
import type { WorkerOptions } from "./worker.js";

const VALUE_FLAGS = new Set(["--listen", "--id", "--threads", "--device", "--memory", "--metrics-port", "--tls-cert", "--tls-key", "--tls-ca", "--advertise", "--token-file", "--tls-server-name"]);
const LIST_FLAGS = new Set(["--allow-root", "--work-root", "--tls-client-name"]);
/** --tls-require-client-cert is kept for old command lines: with TLS, client certificates are always required. */
const BOOL_FLAGS = new Set(["--tls-require-client-cert", "--insecure"]);

export interface WorkerCommandLine extends WorkerOptions {
  /** serving WorkerService without mutual TLS was asked for explicitly */
  insecure: boolean;
}

/**
 * `env` supplies ATVP_TOKEN when --token-file is not given. Without --allow-root the worker's
 * current directory is the one allowed root, as for the coordinator.
 */
export function parseWorkerArgs(argv: readonly string[], env: NodeJS.ProcessEnv = {}): WorkerCommandLine {
  const values = new Map<string, string>();
  const lists = new Map<string, string[]>();
  const bools = new Set<string>();
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i]!;
    let value: string | undefined;
    const eq = flag.indexOf("=");
    if (flag.startsWith("--") && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    if (BOOL_FLAGS.has(flag)) {
      bools.add(flag);
    } else if (VALUE_FLAGS.has(flag) || LIST_FLAGS.has(flag)) {
      value ??= argv[++i];
      if (value === undefined) throw new InvalidArgumentError(flag, "needs a value");
      if (LIST_FLAGS.has(flag)) lists.set(flag, [...(lists.get(flag) ?? []), value]);
      else values.set(flag, value);
    } else {
      throw new InvalidArgumentError(flag, `unknown flag; known: ${[...VALUE_FLAGS, ...LIST_FLAGS, ...BOOL_FLAGS].join(" ")}`);
    }
  }
  const opts: WorkerCommandLine = { insecure: bools.has("--insecure") };
  const listen = values.get("--listen");
  if (listen !== undefined) {
    const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
    if (!m) throw new InvalidArgumentError("--listen", `expected host:port, got ${JSON.stringify(listen)}`);
    opts.host = m[1] ?? (m[2] || "0.0.0.0");
    opts.port = Number(m[3]);
  }
  const int = (flag: string, min: number): number | undefined => {
    const v = values.get(flag);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(flag, `must be an integer >= ${min}, got ${JSON.stringify(v)}`);
    return n;
  };
  opts.id = values.get("--id");
  opts.threads = int("--threads", 1);
  opts.memoryBytes = int("--memory", 1);
  opts.metricsPort = int("--metrics-port", 0);
  opts.advertise = values.get("--advertise");
  const device = values.get("--device");
  if (device !== undefined) {
    if (device !== "cpu" && device !== "cuda" && device !== "auto") throw new InvalidArgumentError("--device", `must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
    opts.device = device;
  }
  const cert = values.get("--tls-cert");
  const key = values.get("--tls-key");
  const ca = values.get("--tls-ca");
  if (cert || key || ca || bools.has("--tls-require-client-cert")) {
    if (!cert || !key || !ca) throw new InvalidArgumentError("--tls-ca", "WorkerService serves mutual TLS only: give --tls-cert, --tls-key and --tls-ca (the CA that signs the coordinator's and the workers' certificates)");
    // --tls-server-name: the name peer workers' certificates carry when it is not their address.
    const tls: TlsConfig = { cert, key, ca, requireClientCert: true, serverName: values.get("--tls-server-name") };
    opts.tls = tls;
  } else if (!opts.insecure) {
    throw new InvalidArgumentError("--tls-cert", "WorkerService accepts only the coordinator and peer workers: give --tls-cert, --tls-key and --tls-ca (mutual TLS), or --insecure to serve any client in plaintext (debugging only)");
  }
  const tokenFile = values.get("--token-file");
  opts.token = tokenFile !== undefined ? readTokenFile(tokenFile) : env["ATVP_TOKEN"] || undefined;
  opts.allowedRoots = (lists.get("--allow-root") ?? [process.cwd()]).map((r) => resolve(r));
  opts.workRoots = (lists.get("--work-root") ?? []).map((r) => resolve(r));
  const clientNames = lists.get("--tls-client-name");
  if (clientNames && !opts.tls) throw new InvalidArgumentError("--tls-client-name", "checks client certificates: it needs --tls-cert, --tls-key and --tls-ca");
  opts.clientNames = clientNames;
  return opts;
}
