#!/usr/bin/env node
/**
 * Coordinator process entry. Prints one JSON line {"ready":true,...} on stdout once it serves,
 * and leaves its running jobs to the next coordinator on SIGTERM.
 *
 * Workers come from `--worker ADDR` (repeatable) and/or, in Kubernetes mode (`--k8s-selector`
 * or `--k8s-namespace`), from the ready pods matching the selector: `--k8s-namespace NS`
 * (default: the pod's own namespace), `--k8s-selector SEL`, `--k8s-worker-port P` (default: the
 * container port named "grpc"), `--k8s-statefulset NAME --k8s-max-replicas N
 * [--k8s-min-replicas N]` to scale the workers around jobs, `--kubeconfig FILE` outside a pod.
 *
 * The token (`--token`, `--token-file` or ATVP_TOKEN) is asked of JobService clients and sent to
 * the workers, with the client certificate of `--worker-tls-*`.
 * `--watch-prunejobs` also runs the PruneJob objects (atvprune.dev/v1alpha1) of the namespace.
 * `--stall-timeout SECONDS` (default 120): a worker that sends nothing on a shard's stream for
 * that long (a heartbeat is due several times within it) is declared lost and its shard rerun.
 * `--keep-work` keeps every job's work folder (by default only FAILED jobs keep theirs).
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { startCoordinator } from "./coordinator.js";
import type { KubernetesOptions } from "./k8s/kubernetesWorkers.js";
// podAddress.ts imports only types of the Kubernetes client, so static mode does not load it.
import { DEFAULT_WORKER_SELECTOR } from "./k8s/podAddress.js";
import { type TlsConfig, readTokenFile } from "../../rpc/index.js";
import { DEFAULT_STALL_TIMEOUT_S } from "./stallWatchdog.js";

function tlsFrom(values: Record<string, unknown>, prefix: string): TlsConfig | undefined {
  const get = (k: string) => values[`${prefix}${k}`] as string | undefined;
  if (!get("cert") && !get("ca")) return undefined;
  return { cert: get("cert"), key: get("key"), ca: get("ca"), requireClientCert: values[`${prefix}require-client-cert`] === true, serverName: get("server-name") };
}

function count(values: Record<string, unknown>, flag: string, min: number): number | undefined {
  const v = values[flag] as string | undefined;
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${flag} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

function kubernetesFrom(values: Record<string, unknown>): KubernetesOptions | undefined {
  const get = (k: string) => values[k] as string | undefined;
  if (get("k8s-selector") === undefined && get("k8s-namespace") === undefined) {
    const stray = ["k8s-worker-port", "k8s-statefulset", "k8s-min-replicas", "k8s-max-replicas", ...(values["watch-prunejobs"] ? [] : ["kubeconfig"])].find((k) => get(k) !== undefined);
    if (stray) throw new Error(`--${stray} needs Kubernetes mode: add --k8s-selector SEL (or --k8s-namespace NS)`);
    return undefined;
  }
  if (get("k8s-statefulset") !== undefined && get("k8s-max-replicas") === undefined) {
    throw new Error("--k8s-statefulset needs --k8s-max-replicas N (the most worker pods a job may scale to)");
  }
  return {
    namespace: get("k8s-namespace"),
    labelSelector: get("k8s-selector") ?? DEFAULT_WORKER_SELECTOR,
    port: count(values, "k8s-worker-port", 1),
    statefulSet: get("k8s-statefulset"),
    minReplicas: count(values, "k8s-min-replicas", 0),
    maxReplicas: count(values, "k8s-max-replicas", 1),
    kubeconfig: get("kubeconfig"),
  };
}

function stallTimeoutSeconds(v: string | undefined): number {
  if (v === undefined) return DEFAULT_STALL_TIMEOUT_S;
  const n = Number(v);
  if (!(Number.isFinite(n) && n > 0)) throw new Error(`--stall-timeout must be a number of seconds > 0, got ${JSON.stringify(v)}`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: "string", default: "127.0.0.1:0" },
      nats: { type: "string", default: process.env["ATVP_NATS_URL"] ?? "nats://127.0.0.1:4222" },
      "nats-user": { type: "string" },
      "nats-password": { type: "string" },
      "nats-token": { type: "string" },
      "nats-creds": { type: "string" },
      worker: { type: "string", multiple: true },
      "work-root": { type: "string", default: ".atvp/jobs" },
      "allow-root": { type: "string", multiple: true },
      "metrics-port": { type: "string" },
      token: { type: "string" },
      "token-file": { type: "string" },
      "tls-cert": { type: "string" }, "tls-key": { type: "string" }, "tls-ca": { type: "string" },
      "tls-require-client-cert": { type: "boolean", default: false },
      "worker-tls-cert": { type: "string" }, "worker-tls-key": { type: "string" }, "worker-tls-ca": { type: "string" },
      "worker-tls-server-name": { type: "string" },
      "k8s-namespace": { type: "string" },
      "k8s-selector": { type: "string" },
      "k8s-worker-port": { type: "string" },
      "k8s-statefulset": { type: "string" },
      "k8s-min-replicas": { type: "string" },
      "k8s-max-replicas": { type: "string" },
      kubeconfig: { type: "string" },
      "watch-prunejobs": { type: "boolean", default: false },
      "stall-timeout": { type: "string" },
      "keep-work": { type: "boolean", default: false },
    },
    strict: true,
  });
  if (!values["worker-tls-cert"]) process.stderr.write("coordinator: WARNING: no --worker-tls-cert: calls to workers are plaintext, and workers that ask for mutual TLS will refuse them\n");
  const listen = values.listen!;
  const colon = listen.lastIndexOf(":");
  const handle = await startCoordinator({
    host: listen.slice(0, colon),
    port: Number(listen.slice(colon + 1)),
    nats: values.nats!,
    natsAuth: {
      user: values["nats-user"] ?? process.env["ATVP_NATS_USER"],
      password: values["nats-password"] ?? process.env["ATVP_NATS_PASSWORD"],
      token: values["nats-token"] ?? process.env["ATVP_NATS_TOKEN"],
      credsFile: values["nats-creds"],
    },
    workers: values.worker ?? [],
    kubernetes: kubernetesFrom(values),
    workRoot: resolve(values["work-root"]!),
    allowedRoots: (values["allow-root"] ?? [process.cwd()]).map((r) => resolve(r)),
    // One shared token: JobService asks for it, and the workers are sent it.
    token: values.token ?? (values["token-file"] !== undefined ? readTokenFile(values["token-file"]) : process.env["ATVP_TOKEN"]),
    tls: tlsFrom(values, "tls-"),
    workerTls: tlsFrom(values, "worker-tls-"),
    metricsPort: values["metrics-port"] === undefined ? undefined : Number(values["metrics-port"]),
    pruneJobs: values["watch-prunejobs"] ? { kubeconfig: values.kubeconfig, namespace: values["k8s-namespace"] } : undefined,
    stallTimeoutMs: stallTimeoutSeconds(values["stall-timeout"]) * 1000,
    keepWork: values["keep-work"] === true,
  });
  process.stdout.write(JSON.stringify({ ready: true, address: handle.address, metricsPort: handle.metricsPort, pid: process.pid }) + "\n");
  const stop = () => {
    void handle.close().finally(() => process.exit(0));
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`coordinator: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
