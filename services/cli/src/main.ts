#!/usr/bin/env node
/** atvp: the atv-prune command line. */
import { AtvpError } from "../../core/src/index.js";
import { CliError } from "./cliError.js";
import { commandUsage, wantsHelp } from "./commandHelp.js";
import { DEFAULT_CLUSTER_DIR } from "./clusterFile.js";
import { genModelCommand } from "./commands/genModel.js";
import { inspectCommand } from "./commands/inspect.js";
import { pruneCommand } from "./commands/prune.js";

const USAGE = `usage: atvp <command> [flags]

commands:
  prune      --model M --calib C --method atv|wanda|magnitude|sparsegpt|atv-sparsegpt|tamp --sparsity S --out DIR
             [--pattern unstructured|2:4|4:8] [--alpha A] [--propagation sequential|dense]
             [--sparsity-profile uniform|owl [--owl-lambda L (0.08)] [--owl-m M (5)]]
             [--tamp-max-sparsity X (S+0.1): tamp only]
             [--nsamples N] [--seed S] [--include RE]... [--exclude RE]... [--magnitude-scope matrix|column]
             [--threads N] [--mask-threads N] [--stats host|graph (host)] [--device cpu|cuda|auto] [--force]
             --model DIR: a genai or transformers.js model folder [--dtype fp32|fp16] [--layout genai|transformers-js];
             --out gets the whole folder, the decoder pruned under its own file names
  calib      --model-dir DIR (--prompts P.jsonl | --conversations C.json) --out CALDIR
             [--image-root R] [--nsamples N --seed S] [--max-tokens T] [--device cpu|cuda|auto]
             [--layout genai|transformers-js] [--dtype fp32|fp16] [--force]
  eval       --dense M --pruned P --calib CAL.jsonl [--json] [--html report.html] [--threads N]
             M, P: decoder .onnx files or model folders
  inspect    MODEL [--json]   MODEL: a decoder .onnx or a model folder ([--layout L] [--dtype D], as prune)
  gen-model  --layers L --hidden H [--fused] [--fp16] [--attention mha|gqa] [--norm rms|layer] [--no-names] --out DIR
  gen-model  --layout genai-qwen2_5_vl|transformers-js-qwen2_5_vl|transformers-js-llava --out DIR [--layers L --hidden H --seed S]
  plan       (--model M | --config config.json) --workers N --worker-memory 80GiB [--network-gbps G (10)] [--replicas 1]
             [--method M (atv)] [--propagation sequential|dense] [--nsamples N (128)] [--tokens-per-sample T (1500)]
             [--cost cost.json] [--json]   M: a decoder .onnx or a model folder ([--layout L] [--dtype D], as prune)
             the stages the coordinator would cut, memory per worker, bytes per link, predicted wall time
  plan       --calibrate [--method M] [--threads N] [--device cpu|cuda|auto] [--out cost.json]   measures the per-block cost table here

cluster (coordinator + workers over gRPC, job state in NATS JetStream):
  cluster up    [--workers N (2)] [--dir D] [--allow-root PATH]... [--threads T] [--ready-timeout S] [--insecure]
                [--stall-timeout S (120)] [--keep-work]
                starts nats-server, N workers and the coordinator in the background; writes D/cluster.json;
                mutual TLS + a token everywhere (CA, certificates, token in D), unless --insecure (debugging only)
  cluster down  [--dir D] [--timeout S]
  submit        prune's job flags (not --threads/--device) [--workers K] [--replicas R] [--keep-work] [--layout L] [--dtype D] [--wait | --watch] [CONNECTION]
                prints the job id; --wait/--watch follow it and exit 0 only if it SUCCEEDED
                --replicas R: data-parallel replicas per stage, each calibrating a share of the samples, same bits at
                any R (every method but magnitude; default: the planner chooses, status --json shows stages and replicas)
  status        JOB [--json] [CONNECTION]
  watch         JOB [CONNECTION]      the job's events so far, then live; exits like submit --wait
  cancel        JOB [--reason R] [--json] [CONNECTION]

  D defaults to ${DEFAULT_CLUSTER_DIR}.
  CONNECTION: --coordinator HOST:PORT (default: the coordinator in --cluster-dir D/cluster.json)
              [--token T (or ATVP_TOKEN)] [--tls-ca F] [--tls-cert F --tls-key F] [--tls-server-name NAME]
`;

const NOT_YET = new Set<string>([]);

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== undefined && wantsHelp(rest)) {
    // "cluster up --help" is the help of "cluster up"; "cluster --help" of every cluster command.
    const sub = command === "cluster" && rest[0] && !rest[0].startsWith("-") ? `${command} ${rest[0]}` : command;
    const usage = commandUsage(USAGE, sub) ?? commandUsage(USAGE, command);
    if (usage !== undefined) {
      process.stdout.write(usage);
      return 0;
    }
  }
  switch (command) {
    case "prune": return pruneCommand(rest);
    case "inspect": return inspectCommand(rest);
    case "gen-model": return genModelCommand(rest);
    case "plan": return (await import("./commands/plan.js")).planCommand(rest);
    // Loaded on demand: it brings @huggingface/transformers.
    case "calib": return (await import("./commands/calib.js")).calibCommand(rest);
    case "eval": return (await import("./commands/eval.js")).evalCommand(rest);
    // Loaded on demand: prune and inspect need neither gRPC nor the generated APIs.
    case "cluster": return (await import("./commands/cluster.js")).clusterCommand(rest);
    case "submit": return (await import("./commands/jobs.js")).submitCommand(rest);
    case "status": return (await import("./commands/jobs.js")).statusCommand(rest);
    case "watch": return (await import("./commands/jobs.js")).watchCommand(rest);
    case "cancel": return (await import("./commands/jobs.js")).cancelCommand(rest);
    case undefined: case "help": case "--help": case "-h":
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      if (NOT_YET.has(command)) {
        process.stderr.write(`atvp ${command}: not supported yet\n`);
        return 2;
      }
      process.stderr.write(`atvp: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

/** ENOSPC, EACCES, ...: the message names the call and the path; a stack would only hide it. */
function isSystemError(err: unknown): err is NodeJS.ErrnoException & { code: string } {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === "string" && /^E[A-Z0-9]+$/.test((err as NodeJS.ErrnoException).code!);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof AtvpError) process.stderr.write(`atvp: error [${err.code}] ${err.message}\n`);
    else if (err instanceof CliError) process.stderr.write(`atvp: error [${err.tag}] ${err.message}\n`);
    else if (isSystemError(err)) process.stderr.write(`atvp: error [${err.code}] ${err.message}\n`);
    else process.stderr.write(`atvp: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
