/**
 * The CLI's side of the coordinator's JobService: which coordinator (a flag, or the local
 * cluster's cluster.json), how to reach it (TLS, bearer token), the job spec as a proto message,
 * and gRPC failures turned into messages that say which coordinator failed and how.
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { JobService, JobSpecSchema, JobState, type JobSpec } from "../../gen/atvprune/v1/job_pb.js";
import type { PruneSpec } from "../../core/src/index.js";
import {
  createClient, type CallOptions, type Client, channelCredentials, channelOptions, GRPC_OPTIONS,
  type TlsConfig, bearerMetadata, readTokenFile,
} from "../../rpc/index.js";
import { str, type Options } from "./args.js";
import { CliError } from "./cliError.js";
import { clusterFilePath, DEFAULT_CLUSTER_DIR, readClusterFile } from "./clusterFile.js";

/** Flags every command that talks to a coordinator takes. */
export const CONNECTION_OPTIONS: Options = {
  coordinator: { type: "string" },
  "cluster-dir": { type: "string" },
  token: { type: "string" },
  "tls-ca": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "tls-server-name": { type: "string" },
};

export interface Target {
  address: string;
  /** found through a local cluster.json: the coordinator shares this machine's filesystem */
  local: boolean;
  /** the local cluster's client certificate and token file (flags given still win) */
  tls?: TlsConfig;
  tokenFile?: string;
}

export function resolveTarget(values: Record<string, unknown>): Target {
  const flag = str(values, "coordinator");
  if (flag) return { address: flag, local: false };
  const dir = str(values, "cluster-dir") ?? DEFAULT_CLUSTER_DIR;
  if (!existsSync(clusterFilePath(dir))) {
    throw new CliError("ARGUMENTS", `--coordinator: not given, and ${clusterFilePath(dir)} does not exist; pass --coordinator HOST:PORT, or --cluster-dir DIR of a cluster started with atvp cluster up`);
  }
  const cluster = readClusterFile(dir);
  return { address: cluster.coordinator, local: true, tls: cluster.tls, tokenFile: cluster.tokenFile };
}

function clusterToken(target: Target): string | undefined {
  if (!target.tokenFile) return undefined;
  try {
    return readTokenFile(target.tokenFile, "tokenFile");
  } catch (err) {
    throw new CliError("CLUSTER", `the cluster's token: ${(err as Error).message}; was the cluster folder changed after atvp cluster up?`);
  }
}

export function tlsFromFlags(values: Record<string, unknown>): TlsConfig | undefined {
  const ca = str(values, "tls-ca");
  const cert = str(values, "tls-cert");
  const key = str(values, "tls-key");
  if (!ca && !cert && !key) return undefined;
  if (Boolean(cert) !== Boolean(key)) throw new CliError("ARGUMENTS", "--tls-cert and --tls-key: give both (a client certificate and its key) or neither");
  return { ca, cert, key, serverName: str(values, "tls-server-name") };
}

const UNARY_DEADLINE_MS = 30_000;

export interface JobConnection {
  address: string;
  client: Client<typeof JobService>;
  /** options for one call: the bearer token, and a deadline for unary calls */
  call(stream?: boolean): CallOptions;
  close(): void;
}

export function connect(target: Target, values: Record<string, unknown>): JobConnection {
  const tls = tlsFromFlags(values) ?? target.tls;
  // The environment keeps the token out of `ps` and shell history.
  const token = str(values, "token") ?? (process.env["ATVP_TOKEN"] || undefined) ?? clusterToken(target);
  const client = createClient(JobService, target.address, channelCredentials(tls), channelOptions(tls, GRPC_OPTIONS));
  return {
    address: target.address,
    client,
    call: (stream = false) => ({ metadata: bearerMetadata(token), deadlineMs: stream ? undefined : UNARY_DEADLINE_MS }),
    close: () => client.close(),
  };
}

const HINTS: Partial<Record<grpc.status, string>> = {
  [grpc.status.UNAVAILABLE]: "is the coordinator running and reachable (atvp cluster up; --tls-* must match its TLS setup)?",
  [grpc.status.UNAUTHENTICATED]: "pass the coordinator's token with --token or ATVP_TOKEN",
  [grpc.status.DEADLINE_EXCEEDED]: "the coordinator did not answer in time",
};

function isServiceError(err: unknown): err is grpc.ServiceError {
  return typeof err === "object" && err !== null && typeof (err as { code?: unknown }).code === "number" && "details" in err;
}

/** A gRPC failure as a CliError tagged with the status name; anything else unchanged. */
export function rpcFailure(err: unknown, conn: { address: string }, what: string): unknown {
  if (!isServiceError(err)) return err;
  const name = grpc.status[err.code] ?? `STATUS_${err.code}`;
  const hint = HINTS[err.code as grpc.status];
  // grpc-js appends an empty "Resolution note:" to connection failures.
  const details = (err.details || err.message).replace(/\.?\s*Resolution note:\s*$/, "");
  return new CliError(name, `${what} (coordinator ${conn.address}): ${details}${hint ? `; ${hint}` : ""}`);
}

export async function rpc<T>(conn: JobConnection, what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw rpcFailure(err, conn, what);
  }
}

/**
 * The engine spec as the wire message. For a local cluster relative paths are made absolute
 * here, since the coordinator's working directory need not be the caller's; a remote
 * coordinator gets them as given (they name its filesystem, not this one).
 */
export function toJobSpecMessage(spec: PruneSpec, workers: number, local: boolean): JobSpec {
  const path = (p: string | undefined) => (p && local ? resolve(p) : p);
  return create(JobSpecSchema, {
    model: path(spec.model) ?? "",
    calib: path(spec.calib) ?? "",
    out: path(spec.out) ?? "",
    method: spec.method,
    sparsity: spec.sparsity,
    pattern: spec.pattern ?? "",
    alpha: spec.alpha,
    propagation: spec.propagation ?? "",
    nsamples: spec.nsamples,
    seed: spec.seed === undefined ? undefined : BigInt(spec.seed),
    include: spec.include ?? [],
    exclude: spec.exclude ?? [],
    magnitudeScope: spec.magnitudeScope ?? "",
    sparsityProfile: spec.sparsityProfile ?? "",
    owlLambda: spec.owlLambda,
    owlM: spec.owlM,
    tampMaxSparsity: spec.tampMaxSparsity,
    force: spec.force ?? false,
    maskThreads: spec.maskThreads,
    stats: spec.stats ?? "",
    workers,
  });
}

/** "RUNNING" for JobState.RUNNING. */
export function stateName(state: JobState): string {
  return JobState[state] ?? `UNKNOWN_${state}`;
}

export function isTerminal(state: JobState): boolean {
  return state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED;
}
