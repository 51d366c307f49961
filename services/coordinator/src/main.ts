#!/usr/bin/env node
/**
 * Coordinator process entry. Prints one JSON line {"ready":true,...} on stdout once it serves,
 * and leaves its running jobs to the next coordinator on SIGTERM.
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { startCoordinator } from "./coordinator.js";
import type { TlsConfig } from "../../rpc/credentials.js";

function tlsFrom(values: Record<string, unknown>, prefix: string): TlsConfig | undefined {
  const get = (k: string) => values[`${prefix}${k}`] as string | undefined;
  if (!get("cert") && !get("ca")) return undefined;
  return { cert: get("cert"), key: get("key"), ca: get("ca"), requireClientCert: values[`${prefix}require-client-cert`] === true, serverName: get("server-name") };
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
      "tls-cert": { type: "string" }, "tls-key": { type: "string" }, "tls-ca": { type: "string" },
      "tls-require-client-cert": { type: "boolean", default: false },
      "worker-tls-cert": { type: "string" }, "worker-tls-key": { type: "string" }, "worker-tls-ca": { type: "string" },
      "worker-tls-server-name": { type: "string" },
    },
    strict: true,
  });
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
    workRoot: resolve(values["work-root"]!),
    allowedRoots: (values["allow-root"] ?? [process.cwd()]).map((r) => resolve(r)),
    token: values.token ?? process.env["ATVP_TOKEN"],
    tls: tlsFrom(values, "tls-"),
    workerTls: tlsFrom(values, "worker-tls-"),
    metricsPort: values["metrics-port"] === undefined ? undefined : Number(values["metrics-port"]),
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
