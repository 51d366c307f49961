#!/usr/bin/env node
/**
 * The worker process: `node main.js --listen host:port [--id ID] [--threads N] [--device D]
 * [--memory BYTES] [--metrics-port P] (--tls-cert F --tls-key F --tls-ca F | --insecure)
 * [--token-file F] [--tls-client-name NAME]... [--allow-root DIR]... [--work-root DIR]...`.
 * WorkerService takes calls only from holders of a client certificate signed by the CA (naming
 * one of the --tls-client-name, when given: the coordinator's and the workers') and of the token, from --token-file or
 * ATVP_TOKEN, when one is set); paths in assignments must lie in the allowed roots (the current
 * directory by default), work dirs in those or a work root (a root that does not exist yet is
 * refused per call, not at start: on a shared volume it may be created later). Prints one JSON
 * line {"ready":true,"address","metricsPort","pid"} on stdout once it listens (whoever spawned it waits for that line) and exits cleanly on
 * SIGTERM or SIGINT. Logs go to stderr.
 */
import { startWorker } from "./worker.js";
import { parseWorkerArgs, type WorkerCommandLine } from "./workerArgs.js";

async function main(): Promise<void> {
  let opts: WorkerCommandLine;
  try {
    opts = parseWorkerArgs(process.argv.slice(2), process.env);
  } catch (err) {
    process.stderr.write(`atvp worker: ${(err as Error).message}\n`);
    process.exit(2);
  }
  if (!opts.tls) {
    process.stderr.write("atvp worker: WARNING: --insecure: WorkerService serves plaintext and takes calls from ANY client that reaches its port (debugging only; use --tls-cert/--tls-key/--tls-ca)\n");
  }
  const worker = await startWorker(opts);
  process.stdout.write(JSON.stringify({ ready: true, address: worker.address, metricsPort: worker.metricsPort ?? null, pid: process.pid, id: worker.id }) + "\n");
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`[${worker.id}] ${signal}: stopping\n`);
    worker.close().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`[${worker.id}] close failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

main().catch((err: unknown) => {
  process.stderr.write(`atvp worker: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
