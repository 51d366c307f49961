/**
 * Per-block figures of one model on the device it runs on, one JSON line per block and one for
 * the whole run (bench/gpu.sh runs it on CUDA; it runs on CPU as well):
 *
 *   node dist/bench/blockFigures.js --model M --calib C --device cuda|cpu|auto --stats host|graph
 *       [--method atv] [--sparsity 0.5] [--threads N] [--mask-threads N]
 *
 *   {"bench":"gpu","block":i,"label":..,"device":..,"stats":..,"seconds":..,"tokensPerSecond":..,
 *    "maskSeconds":..,"hostBytes":..,"weightBytes":..}
 *   {"bench":"gpu","device":..,"stats":..,"method":..,"threads":..,"blocks":..,"samples":..,"tokens":..,
 *    "seconds":..,"tokensPerSecond":..,"maskSeconds":..,"hostBytes":..,"weightBytes":..}
 *
 * seconds and tokensPerSecond are the engine's (report.json's blocks[]); maskSeconds and
 * hostBytes are measured around the engine (bench/blockRun.ts). The last line sums the blocks;
 * its tokensPerSecond is tokens x blocks over the summed seconds. Errors go to stderr as
 * `blockFigures: error [CODE] message`, exit 1.
 */
import { availableParallelism } from "node:os";
import { AtvpError, InvalidArgumentError } from "../services/core/src/errors.js";
import { checkStats } from "../services/core/src/pipeline/pruneSpec.js";
import type { ExecutionDevice } from "../services/core/src/runtime/inferenceHost.js";
import { int, num, parse, required, str } from "../services/cli/src/args.js";
import { runEngineBlocks, type BlockFigures } from "./blockRun.js";

const FLAGS = {
  model: { type: "string" },
  calib: { type: "string" },
  device: { type: "string" },
  stats: { type: "string" },
  method: { type: "string" },
  sparsity: { type: "string" },
  threads: { type: "string" },
  "mask-threads": { type: "string" },
} as const;

async function main(argv: string[]): Promise<void> {
  const { values } = parse(argv, FLAGS);
  const device = required(values, "device");
  if (device !== "cpu" && device !== "cuda" && device !== "auto") throw new InvalidArgumentError("--device", `must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
  const method = str(values, "method") ?? "atv";
  const stats = checkStats(required(values, "stats"), method, "--stats");
  const run = await runEngineBlocks({
    model: required(values, "model"), calib: required(values, "calib"), method, stats, device: device as ExecutionDevice | "auto",
    threads: int(values, "threads") ?? availableParallelism(), maskThreads: int(values, "mask-threads"), sparsity: num(values, "sparsity"),
  }, (b) => {
    console.log(JSON.stringify({ bench: "gpu", block: b.block, label: b.label, device: b.device, stats, seconds: b.seconds, tokensPerSecond: b.tokensPerSecond, maskSeconds: b.maskSeconds, hostBytes: b.hostBytes, weightBytes: b.weightBytes }));
  });
  const sum = (f: (b: BlockFigures) => number) => run.blocks.reduce((a, b) => a + f(b), 0);
  const seconds = sum((b) => b.seconds);
  console.log(JSON.stringify({
    bench: "gpu", device: run.device, stats, method, threads: run.threads, blocks: run.blocks.length, samples: run.samples, tokens: run.tokens,
    seconds, tokensPerSecond: seconds > 0 ? (run.tokens * run.blocks.length) / seconds : 0,
    maskSeconds: sum((b) => b.maskSeconds), hostBytes: sum((b) => b.hostBytes), weightBytes: sum((b) => b.weightBytes),
  }));
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof AtvpError) process.stderr.write(`blockFigures: error [${err.code}] ${err.message}\n`);
  else process.stderr.write(`blockFigures: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
