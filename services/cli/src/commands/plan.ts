/**
 * `atvp plan`: the stage grid, memory per worker, bytes per link and predicted wall time of a job
 * on N workers, from a model's graph or a Hugging Face config.json; `--calibrate` measures the
 * per-block cost table the prediction uses, through the real engine on a generated model.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  decoderPath, DEFAULT_COST_TABLE, InvalidArgumentError, measureCostTable, methodCost, methodNames, readCostTable, readHfConfig,
  shapeFromModel, type CostTable,
} from "../../../core/src/index.js";
import { planGrid, type GridPlan } from "../../../coordinator/src/index.js";
import { int, num, parse, str } from "../args.js";
import { parseByteSize } from "../byteSize.js";

export async function planCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    model: { type: "string" },
    config: { type: "string" },
    workers: { type: "string" },
    "worker-memory": { type: "string" },
    "network-gbps": { type: "string" },
    replicas: { type: "string" },
    method: { type: "string" },
    propagation: { type: "string" },
    nsamples: { type: "string" },
    "tokens-per-sample": { type: "string" },
    cost: { type: "string" },
    json: { type: "boolean", default: false },
    calibrate: { type: "boolean", default: false },
    out: { type: "string" },
    threads: { type: "string" },
    // where --calibrate runs onnxruntime: cpu (default) | cuda | auto
    device: { type: "string" },
    // pick the decoder of a model folder (--model DIR), as prune does
    layout: { type: "string" },
    dtype: { type: "string" },
  });
  if (values["calibrate"]) return calibrate(str(values, "method"), int(values, "threads"), str(values, "out"), str(values, "device"));

  const model = str(values, "model");
  const config = str(values, "config");
  if ((model === undefined) === (config === undefined)) throw new InvalidArgumentError("--model/--config", "give exactly one: an ONNX decoder (--model) or a Hugging Face config.json (--config)");
  const workers = positive(int(values, "workers"), "--workers");
  const memory = str(values, "worker-memory");
  if (memory === undefined) throw new InvalidArgumentError("--worker-memory", "is required (e.g. 80GiB)");
  const propagation = str(values, "propagation") ?? "sequential";
  if (propagation !== "sequential" && propagation !== "dense") throw new InvalidArgumentError("--propagation", `must be sequential or dense, got ${JSON.stringify(propagation)}`);
  const method = str(values, "method") ?? "atv";
  const costFile = str(values, "cost");
  const table: CostTable = costFile === undefined ? DEFAULT_COST_TABLE : readCostTable(costFile);
  const cost = methodCost(table, method, costFile ?? "the committed cost table");
  const shape = model !== undefined ? shapeFromModel(decoderPath(model, { layout: str(values, "layout"), dtype: str(values, "dtype") })) : readHfConfig(config!);
  const plan = planGrid(shape, {
    workers,
    workerMemoryBytes: parseByteSize(memory, "--worker-memory"),
    networkGbps: positive(num(values, "network-gbps") ?? 10, "--network-gbps"),
    replicas: nonNegative(int(values, "replicas") ?? 0, "--replicas"),
    method,
    samples: positive(int(values, "nsamples") ?? 128, "--nsamples"),
    tokensPerSample: positive(int(values, "tokens-per-sample") ?? 1500, "--tokens-per-sample"),
    propagation,
  }, cost);
  if (values["json"]) process.stdout.write(JSON.stringify({ ...plan, costTable: { source: costFile ?? "default", machine: table.machine, measuredAt: table.measuredAt } }, null, 2) + "\n");
  else process.stdout.write(formatPlan(plan, table, costFile) + "\n");
  return 0;
}

function positive(n: number | undefined, flag: string): number {
  if (n === undefined) throw new InvalidArgumentError(flag, "is required");
  if (!(n > 0)) throw new InvalidArgumentError(flag, `must be more than 0, got ${n}`);
  return n;
}

function nonNegative(n: number, flag: string): number {
  if (!(Number.isInteger(n) && n >= 0)) throw new InvalidArgumentError(flag, `must be 0 (the planner chooses) or more, got ${n}`);
  return n;
}

const gib = (b: number) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(2)} MiB`);
const secs = (s: number) => (s >= 3600 ? `${(s / 3600).toFixed(1)} h` : `${s.toFixed(1)} s`);

/** worker-3, or worker-0..worker-15 (16) for a stage's replicas on consecutive workers, else a list. */
function onWorkers(workers: readonly string[]): string {
  if (workers.length === 1) return workers[0]!;
  const n = workers.map((w) => Number(/^worker-(\d+)$/.exec(w)?.[1]));
  const consecutive = n.every((v, i) => Number.isInteger(v) && v === n[0]! + i);
  return consecutive ? `${workers[0]}..${workers.at(-1)} (${workers.length} replicas)` : `${workers.join(", ")} (${workers.length} replicas)`;
}

function formatPlan(p: GridPlan, table: CostTable, costFile: string | undefined): string {
  const out = [
    `${p.source}: ${p.blocks} blocks, ${p.method} (${p.propagation}), ${p.samples} samples x ${p.tokensPerSample} tokens`,
    `grid: ${p.stages.length} stages x ${p.replicas} replica(s) on ${p.workers} workers of ${gib(p.workerMemoryBytes)}`,
  ];
  for (const s of p.stages) {
    out.push(`  stage ${s.index} on ${onWorkers(s.workers)}: blocks ${s.firstBlock}..${s.endBlock - 1} (${s.endBlock - s.firstBlock}), weights ${gib(s.weightBytes)}, peak memory ${gib(s.peakBytes)} (one block at a time), ${secs(s.seconds)}`);
  }
  for (const l of p.links) out.push(`  link ${l.from} -> ${l.to}: ${gib(l.bytes)} (${gib(p.boundaryBytesPerSample)} per sample), ${secs(l.seconds)}`);
  out.push(`predicted wall time: ${secs(p.predicted.wallSeconds)} (compute ${secs(p.predicted.computeSeconds)}, transfer ${secs(p.predicted.transferSeconds)})`);
  const t = p.predicted.computeByTerm;
  out.push(`  compute: forwards (tokens x params) ${secs(t.tokenParams)}, per-sample ${secs(t.samples)}, compress step ${secs(t.compressUnits)}`);
  out.push(`cost table: ${costFile ?? "committed"}, measured ${table.measuredAt} on ${table.machine.cpu} (${table.machine.cores} cores, ${table.machine.device})`);
  return out.join("\n");
}

/** Measures the cost table (core plan/costCalibration.ts) for the methods that read calibration tokens. */
async function calibrate(method: string | undefined, threads: number | undefined, out: string | undefined, device: string | undefined): Promise<number> {
  const methods = method !== undefined ? [method] : methodNames().filter((m) => m === "atv" || m === "wanda" || m === "sparsegpt");
  if (device !== undefined && device !== "cpu" && device !== "cuda" && device !== "auto") throw new InvalidArgumentError("--device", `must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
  const dir = mkdtempSync(join(tmpdir(), "atvp-calibrate-"));
  try {
    const table = await measureCostTable({
      methods, threads, dir, device,
      onRun: (r) => process.stderr.write(`calibrating ${r.method}: hidden ${r.hidden}, ${r.samples} samples (${r.index + 1}/${r.of})\n`),
    });
    const text = JSON.stringify(table, null, 2) + "\n";
    if (out !== undefined) writeFileSync(out, text);
    process.stdout.write(text);
    return 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
