/**
 * A worker process's parts put together: the gRPC server with its control plane
 * (WorkerService) and its data plane (WorkerDataService), its outboxes and shard table, its
 * metrics and the /metrics HTTP endpoint. startWorker is what main.ts runs and what
 * tests, benchmarks and `atvp cluster up` embed.
 */
import { availableParallelism, hostname } from "node:os";
import * as grpc from "@grpc/grpc-js";
import { WorkerService } from "../../gen/atvprune/v1/worker_pb.js";
import { InvalidArgumentError } from "../../core/src/index.js";
import { startMetricsServer, type MetricsServer } from "../../observability/index.js";
import {
  addService, channelCredentials, channelOptions, GRPC_OPTIONS, serverCredentials, type TlsConfig,
  bearerClientOptions, addHealthAndReflection,
} from "../../rpc/index.js";
import { withFastStateChunks } from "./dataplane/chunkCodec.js";
import { OutboxRegistry } from "./dataplane/outbox.js";
import { ExchangeRegistry } from "./dataplane/exchangeRegistry.js";
import { deviceMemoryBytes, gpuMemoryBytes } from "./gpuMemory.js";
import { watchDevice, type DeviceProbeOptions } from "./deviceHealth.js";
import { DATA_PLANE_CHANNEL_OPTIONS } from "./dataplane/upstreamStates.js";
import { controlServiceImpl } from "./control/controlService.js";
import { ShardTable } from "./control/shardTable.js";
import { dataServiceImpl } from "./dataplane/dataService.js";
import { WorkerDataService } from "../../gen/atvprune/v1/worker_data_pb.js";
import { WorkerMetrics } from "./workerMetrics.js";
import { registerWorkerStatusMetrics } from "./workerStatusMetrics.js";

export interface WorkerOptions {
  host?: string;
  /** 0 = a free port */
  port?: number;
  id?: string;
  /** onnxruntime intra-op threads per shard */
  threads?: number;
  device?: "cpu" | "cuda" | "auto";
  /** memory this worker offers for a shard (default: the GPU's for cuda, else the machine's) */
  memoryBytes?: number;
  /**
   * TLS of WorkerService and of this worker's calls to peers. The server always asks for a
   * client certificate signed by `tls.ca`: only the coordinator and peer workers may call.
   */
  tls?: TlsConfig;
  /** shared token: calls must carry it, and calls to peers send it */
  token?: string;
  /** names (CN or DNS SAN) callers' client certificates must answer to (default: any from the CA) */
  clientNames?: string[];
  /** folders assignment paths must lie in (undefined: not confined, for embedded use) */
  allowedRoots?: string[];
  /** further folders job work dirs may lie in */
  workRoots?: string[];
  /** undefined = no HTTP endpoint, 0 = a free port */
  metricsPort?: number;
  /** how long PullStates waits for the shard producing the asked states to be assigned here */
  pullWaitMs?: number;
  /** host:port other workers use to reach this one (default host:port as bound) */
  advertise?: string;
  /** how a cuda/auto worker checks that its GPU is still there (gRPC health goes NOT_SERVING without it) */
  deviceProbe?: DeviceProbeOptions;
  log?: (message: string) => void;
}

export interface WorkerHandle {
  id: string;
  address: string;
  metricsPort?: number;
  /** the states this worker serves (lets benchmarks feed the data plane directly) */
  outboxes: OutboxRegistry;
  /** the records this worker's replicas publish to their peers (PullExchange) */
  exchanges: ExchangeRegistry;
  metrics: WorkerMetrics;
  /** Cancels running shards, stops serving and closes the endpoints. */
  close(): Promise<void>;
}

export async function startWorker(opts: WorkerOptions = {}): Promise<WorkerHandle> {
  const host = opts.host ?? "127.0.0.1";
  const threads = opts.threads ?? availableParallelism();
  if (!Number.isInteger(threads) || threads < 1) throw new InvalidArgumentError("threads", `must be a positive integer, got ${threads}`);
  const device = opts.device ?? "cpu";
  if (!["cpu", "cuda", "auto"].includes(device)) throw new InvalidArgumentError("device", `must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
  const id = opts.id ?? `worker-${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
  const log = opts.log ?? ((m: string) => process.stderr.write(`[${id}] ${m}\n`));
  const memoryBytes = opts.memoryBytes ?? (await deviceMemoryBytes(device, log));

  const server = new grpc.Server(GRPC_OPTIONS);
  const boundPort = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${hostPart(host)}:${opts.port ?? 0}`, serverCredentials(opts.tls && { ...opts.tls, requireClientCert: true }), (err, port) => (err ? reject(err) : resolve(port)));
  });
  const address = opts.advertise ?? `${hostPart(advertisedHost(host))}:${boundPort}`;
  const metrics = new WorkerMetrics(id);
  const outboxes = new OutboxRegistry();
  const exchanges = new ExchangeRegistry();
  const shards = new ShardTable();
  const me = { id, address, device, memoryBytes, threads };
  const callers = { token: opts.token, clientNames: opts.clientNames };
  addService(server, WorkerService, controlServiceImpl(me, shards, {
    workerId: id, threads, device, outboxes, exchanges, metrics, log,
    credentials: channelCredentials(opts.tls),
    channelOptions: { ...GRPC_OPTIONS, ...DATA_PLANE_CHANNEL_OPTIONS, ...channelOptions(opts.tls), ...bearerClientOptions(opts.token) },
  }, { ...callers, policy: opts.allowedRoots && { allowedRoots: opts.allowedRoots, workRoots: opts.workRoots ?? [] } }));
  const served = (n: number) => metrics.activationBytes.inc({ direction: "served" }, n);
  addService(withFastStateChunks(server), WorkerDataService, dataServiceImpl(shards, outboxes, served, opts.pullWaitMs, callers, exchanges));
  const health = addHealthAndReflection(server, [WorkerService, WorkerDataService]);
  const hadGpu = device !== "cpu" && (await gpuMemoryBytes(opts.deviceProbe)) !== undefined;
  const deviceWatch = watchDevice(hadGpu, (present) => health.setServing(present && !closing), log, opts.deviceProbe);
  registerWorkerStatusMetrics(metrics.registry, { device, memoryBytes, deviceUp: () => deviceWatch.present, shardsRunning: () => shards.all().length });

  let closing = false;
  let http: MetricsServer | undefined;
  try {
    if (opts.metricsPort !== undefined) http = await startMetricsServer(metrics.registry, () => !closing, opts.metricsPort, host);
  } catch (err) {
    server.forceShutdown();
    deviceWatch.stop();
    throw err;
  }
  health.setServing(true);

  return {
    id, address, metricsPort: http?.port, outboxes, exchanges, metrics,
    async close() {
      if (closing) return;
      closing = true;
      // Draining: probes and balancers see NOT_SERVING while running shards are cancelled.
      health.setServing(false);
      deviceWatch.stop();
      for (const run of shards.all()) run.cancel();
      await Promise.race([shards.finishedAll(), delay(5000)]);
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 2000);
        server.tryShutdown(() => { clearTimeout(force); resolve(); });
      });
      await http?.close();
    },
  };
}

function hostPart(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** A wildcard bind is not an address anyone can dial: advertise the host name instead. */
function advertisedHost(host: string): string {
  return host === "0.0.0.0" || host === "::" ? hostname() : host;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
