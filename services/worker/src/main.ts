#!/usr/bin/env node
/**
 * The worker process: `node main.js --listen host:port [--id ID] [--threads N] [--device D]
 * [--memory BYTES] [--metrics-port P] [--tls-cert F --tls-key F [--tls-ca F]
 * [--tls-require-client-cert]]`. Prints one JSON line {"ready":true,"address","metricsPort","pid"}
 * on stdout once it listens (whoever spawned it waits for that line) and exits cleanly on
 * SIGTERM or SIGINT. Logs go to stderr.
 */
import { startWorker, type WorkerOptions } from "./worker.js";
import { parseWorkerArgs } from "./workerArgs.js";

async function main(): Promise<void> {
  let opts: WorkerOptions;
  try {
    opts = parseWorkerArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`atvp worker: ${(err as Error).message}\n`);
    process.exit(2);
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
