// The cost model `atvp plan` predicts with (core plan/costCalibration.ts): the fit, a block's
// predicted seconds with replicas, the compress step's makespan, and the table's checks. All
// figures are worked by hand; `atvp plan --calibrate` itself is run in test/cli/plan.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  blockCostTerms, blockSeconds, blockSecondsByTerm, createMethod, fitCost, linearCompressCost, methodDefinition, methodNames, readCostTable, type BlockTerms, type MethodCost,
} from "../../services/core/src/index.js";
import { compressMakespan } from "../../services/core/src/pipeline/compressShares.js";
import type { LinearInfo } from "../../services/core/src/graph/linears.js";
import { tempDir } from "../support/fixtures.js";

const linear = (weight: string, inDim: number, outDim: number): LinearInfo => ({ weight, inDim, outDim, dataType: 1 } as LinearInfo);
const terms = (tokenParams: number, samples: number, compressUnits: number): BlockTerms => ({ tokenParams, samples, compressUnits });

function close(actual: number, expected: number, rel = 1e-9): void {
  assert.ok(Math.abs(actual - expected) <= rel * Math.max(Math.abs(expected), 1e-300), `${actual} is not ${expected}`);
}

test("fitCost recovers the coefficients a set of blocks was made with", () => {
  const truth = terms(2e-11, 3e-3, 1e-8);
  // Blocks of three widths at two token counts, as the calibration runs them.
  const rows = [256, 512, 1024].flatMap((h) => [512, 2048].map((t) => terms(t * 12 * h * h, t / 128, 12 * h * h)));
  const seconds = rows.map((r) => r.tokenParams * truth.tokenParams + r.samples * truth.samples + r.compressUnits * truth.compressUnits);
  const fit = fitCost(rows, seconds);
  for (const k of ["tokenParams", "samples", "compressUnits"] as const) close(fit[k], truth[k], 1e-6);
});

test("fitCost never gives a negative coefficient: the best fit with it held at 0 (worked by hand)", () => {
  // Unconstrained: 1·a + 1·b = 2 and 2·a + 1·b = 1 give a = -1, b = 3. With a >= 0 the best is
  // b alone: b = (2 + 1) / 2 = 1.5 (residual 0.5), better than a alone: a = (2 + 2) / 5 = 0.8
  // (residual 1.2² + 0.6² = 1.8). The all-zero column (compress units) fits nothing.
  const fit = fitCost([terms(1, 1, 0), terms(2, 1, 0)], [2, 1]);
  assert.deepEqual(fit, { tokenParams: 0, samples: 1.5, compressUnits: 0 });
  // One term explains it all: a = 3.
  close(fitCost([terms(1, 0, 0), terms(2, 0, 0)], [3, 6]).tokenParams, 3);
  assert.throws(() => fitCost([terms(1, 0, 0)], []), /1 rows for 0 timings/);
});

test("compressMakespan: the most one replica carries when the engine shares a block out (worked by hand)", () => {
  // Longest first to the least loaded: 5 -> r0, 4 -> r1, 3 -> r1 (7), 3 -> r0 (8), 2 -> r1 (9).
  assert.equal(compressMakespan([5, 4, 3, 3, 2], 2), 9);
  assert.equal(compressMakespan([5, 4, 3, 3, 2], 1), 17);
  // Fewer linears than replicas: every replica compresses all of them.
  assert.equal(compressMakespan([5, 4], 3), 9);
});

test("blockSeconds: the token and sample terms divide over replicas, the compress step by its shares (worked by hand)", () => {
  const cost: MethodCost = { secondsPerTokenParam: 1, secondsPerSample: 100, secondsPerCompressUnit: 0.001, blocks: 1, tokens: 1, paramsPerBlock: 1 };
  const block = [linear("a", 4, 8), linear("b", 8, 4)];
  const sparsegpt = methodDefinition("sparsegpt");
  // 10 tokens of 2 samples: params 64 (x10 = 640), SparseGPT's solves in²(in+out): 16 x 12 = 192
  // and 64 x 12 = 768.
  assert.deepEqual(blockCostTerms(sparsegpt, block, 10, 2), terms(640, 2, 960));
  close(blockSeconds(cost, sparsegpt, block, 10, 2), 640 + 200 + 0.96);
  // Two replicas: half of 840 plus the longer solve, 768 units.
  close(blockSeconds(cost, sparsegpt, block, 10, 2, 2), 420 + 0.768);
  const parts = blockSecondsByTerm(cost, sparsegpt, block, 10, 2, 2);
  close(parts.tokenParams, 320);
  close(parts.samples, 100);
  close(parts.compressUnits, 0.768);
  // A method without a compress cost counts entries: 32 each, one linear per replica.
  close(blockSeconds(cost, methodDefinition("atv"), block, 10, 2, 2), 420 + 0.032);
  // A table from before the newer terms: tokens x params alone.
  close(blockSeconds({ secondsPerTokenParam: 1e-3, blocks: 1, tokens: 1, paramsPerBlock: 1 }, sparsegpt, block, 10, 2, 2), 0.32);
});

test("every method's definition prices a linear's compression as the method the engine runs does", () => {
  const ls = [linear("q", 64, 64), linear("down", 176, 64), linear("up", 64, 176)];
  for (const name of methodNames()) {
    const definition = methodDefinition(name);
    const method = createMethod({ method: name, alpha: 1, magnitudeScope: "matrix", pattern: { kind: "unstructured" }, patternText: "unstructured" });
    for (const l of ls) assert.equal(linearCompressCost(definition, l), linearCompressCost(method, l), `${name} ${l.weight}`);
  }
  assert.equal(linearCompressCost(methodDefinition("sparsegpt"), linear("down", 176, 64)), 176 * 176 * 240);
});

test("readCostTable: the newer terms are optional, never negative, and a table must predict some time", () => {
  const tmp = tempDir("cost-table");
  try {
    const write = (methods: unknown) => {
      const p = join(tmp.path, `t${Math.random()}.json`);
      writeFileSync(p, JSON.stringify({ machine: {}, measuredAt: "x", methods }));
      return p;
    };
    const base = { blocks: 1, tokens: 1, paramsPerBlock: 1 };
    assert.equal(readCostTable(write({ atv: { secondsPerTokenParam: 1e-9, ...base } })).methods["atv"]!.secondsPerTokenParam, 1e-9);
    assert.equal(readCostTable(write({ atv: { secondsPerTokenParam: 0, secondsPerCompressUnit: 1e-8, ...base } })).methods["atv"]!.secondsPerCompressUnit, 1e-8);
    assert.throws(() => readCostTable(write({ atv: { secondsPerTokenParam: 1e-9, secondsPerSample: -1, ...base } })), /methods\.atv\.secondsPerSample must be a number, 0 or more/);
    assert.throws(() => readCostTable(write({ atv: { secondsPerTokenParam: 0, ...base } })), /methods\.atv predicts no time at all/);
  } finally {
    tmp.cleanup();
  }
});
