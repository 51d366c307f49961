/**
 * The per-block cost table `atvp plan` predicts wall time from, per method: a block's seconds as
 * calibration tokens x parameters, samples and the method's compress units,
 * each with its seconds, measured by `atvp plan --calibrate` through the real engine on the machine named
 * in it (costCalibration.ts).
 */
import { readFileSync } from "node:fs";
import { InvalidArgumentError } from "../errors.js";

export interface MethodCost {
  /** seconds per calibration token per prunable parameter of a block (the forward's matmuls, Hessians) */
  secondsPerTokenParam: number;
  /** seconds per calibration sample per block (a forward's dispatch); absent in older tables: 0 */
  secondsPerSample?: number;
  /** seconds per unit of the method's compress cost (entries; in²(in+out) for SparseGPT's solve), whatever the tokens; absent in older tables: 0 */
  secondsPerCompressUnit?: number;
  /** what it was measured on: blocks fitted, the most tokens of a run, the widest model's parameters per block and the models' hidden widths */
  blocks: number;
  tokens: number;
  paramsPerBlock: number;
  widths?: number[];
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
    if (typeof c?.secondsPerTokenParam !== "number" || !(c.secondsPerTokenParam >= 0)) {
      throw new InvalidArgumentError(path, `methods.${method}.secondsPerTokenParam must be a number, 0 or more`);
    }
    for (const field of ["secondsPerSample", "secondsPerCompressUnit"] as const) {
      const v = c[field];
      if (v !== undefined && (typeof v !== "number" || !(v >= 0))) throw new InvalidArgumentError(path, `methods.${method}.${field} must be a number, 0 or more`);
    }
    if (!(c.secondsPerTokenParam + (c.secondsPerSample ?? 0) + (c.secondsPerCompressUnit ?? 0) > 0)) {
      throw new InvalidArgumentError(path, `methods.${method} predicts no time at all (every seconds field is 0)`);
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
