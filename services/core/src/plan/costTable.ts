/**
 * The per-block cost table `atvp plan` predicts wall time from: seconds per block per
 * calibration token per parameter, per method, measured by `atvp plan --calibrate` through the
 * real engine on the machine named in it.
 */
import { readFileSync } from "node:fs";
import { InvalidArgumentError } from "../errors.js";

export interface MethodCost {
  /** block seconds / (calibration tokens x the block's prunable parameters), mean over blocks */
  secondsPerTokenParam: number;
  /** what it was measured on */
  blocks: number;
  tokens: number;
  paramsPerBlock: number;
}

export interface CostTable {
  machine: { cpu: string; cores: number; platform: string; node: string; device: string; threads: number };
  measuredAt: string;
  methods: Record<string, MethodCost>;
}

export function readCostTable(path: string): CostTable {
  let table: CostTable;
  try {
    table = JSON.parse(readFileSync(path, "utf8")) as CostTable;
  } catch (err) {
    throw new InvalidArgumentError(path, `cannot read a cost table: ${(err as Error).message}`);
  }
  if (typeof table !== "object" || table === null || typeof table.methods !== "object" || table.methods === null) {
    throw new InvalidArgumentError(path, "is not a cost table (no \"methods\"); write one with atvp plan --calibrate --out FILE");
  }
  for (const [method, c] of Object.entries(table.methods)) {
    if (typeof c?.secondsPerTokenParam !== "number" || !(c.secondsPerTokenParam > 0)) {
      throw new InvalidArgumentError(path, `methods.${method}.secondsPerTokenParam must be a positive number`);
    }
  }
  return table;
}

export function methodCost(table: CostTable, method: string, source: string): MethodCost {
  const cost = table.methods[method];
  if (cost === undefined) {
    throw new InvalidArgumentError(source, `has no cost for method ${method} (has: ${Object.keys(table.methods).join(", ")}); measure it with atvp plan --calibrate --method ${method} --out FILE`);
  }
  return cost;
}
