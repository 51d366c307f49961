#!/usr/bin/env node
/** atvp: the atv-prune command line. */
import { AtvpError } from "../../core/src/errors.js";
import { genModelCommand } from "./commands/genModel.js";
import { inspectCommand } from "./commands/inspect.js";
import { pruneCommand } from "./commands/prune.js";

const USAGE = `usage: atvp <command> [flags]

commands:
  prune      --model M --calib C --method atv|wanda|magnitude --sparsity S --out DIR
             [--pattern unstructured|2:4|4:8] [--alpha A] [--propagation sequential|dense]
             [--nsamples N] [--seed S] [--include RE]... [--exclude RE]... [--magnitude-scope matrix|column]
             [--threads N] [--device cpu|cuda|auto] [--force]
  inspect    MODEL [--json]
  gen-model  --layers L --hidden H [--fused] [--fp16] [--attention mha|gqa] [--norm rms|layer] [--no-names] --out DIR

not supported yet: submit, watch, status, cancel, cluster (the gRPC cluster), eval
`;

const NOT_YET = new Set(["submit", "watch", "status", "cancel", "cluster", "eval"]);

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "prune": return pruneCommand(rest);
    case "inspect": return inspectCommand(rest);
    case "gen-model": return genModelCommand(rest);
    case undefined: case "help": case "--help": case "-h":
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      if (NOT_YET.has(command)) {
        process.stderr.write(`atvp ${command}: not supported yet (the cluster mode is not built; use atvp prune)\n`);
        return 2;
      }
      process.stderr.write(`atvp: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof AtvpError) process.stderr.write(`atvp: error [${err.code}] ${err.message}\n`);
    else process.stderr.write(`atvp: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
