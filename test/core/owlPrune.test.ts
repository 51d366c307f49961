/**
 * The OWL profile end to end in one process (METHODS.md §2): the outlier pass runs on the dense
 * model with Wanda's statistic whatever the method, so wanda, atv and sparsegpt get the same
 * per-block targets, with mean S and spread 2λ; report.json records them per linear and block.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { resolveSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import type { PruneReport } from "../../services/core/src/pipeline/report.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("owl-prune");
let model: { model: string; calib: string };
const reports = new Map<string, PruneReport>();
let counter = 0;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 4, hidden: 64, samples: 6, seqLen: 32, imageTokens: 12, seed: 9 });
  model = { model: g.modelPath, calib: g.calibPath };
  for (const method of ["wanda", "atv", "sparsegpt"]) {
    reports.set(method, await pruneModel({ ...model, out: join(tmp.path, `o${++counter}`), method, sparsity: 0.5, sparsityProfile: "owl", threads: 1 }));
  }
});
after(() => tmp.cleanup());

function blockTargets(r: PruneReport): number[] {
  return r.blocks.map((b) => {
    const ts = new Set(r.layers.filter((l) => l.block === b.index).map((l) => l.targetSparsity));
    assert.equal(ts.size, 1, `every linear of block ${b.index} has the block's target`);
    return [...ts][0]!;
  });
}

test("the same per-block targets for every method, mean S, spread 2λ (defaults λ = 0.08, M = 5)", () => {
  const t = blockTargets(reports.get("wanda")!);
  assert.deepEqual(blockTargets(reports.get("atv")!), t);
  assert.deepEqual(blockTargets(reports.get("sparsegpt")!), t);
  assert.ok(Math.abs(t.reduce((a, b) => a + b, 0) / t.length - 0.5) < 1e-12, `mean of ${t}`);
  assert.ok(Math.abs(Math.max(...t) - Math.min(...t) - 0.16) < 1e-12, `spread of ${t}`);
  assert.deepEqual(reports.get("wanda")!.sparsityProfile, { name: "owl", owlLambda: 0.08, owlM: 5 });
});

test("Wanda prunes int(in·s_l) per output column; blocks report achieved and target sparsity", () => {
  const r = reports.get("wanda")!;
  for (const l of r.layers) assert.equal(l.pruned, Math.floor(l.shape[0] * l.targetSparsity) * l.shape[1], l.weight);
  for (const b of r.blocks) {
    const ls = r.layers.filter((l) => l.block === b.index);
    const params = ls.reduce((a, l) => a + l.params, 0);
    assert.equal(b.sparsity, ls.reduce((a, l) => a + l.pruned, 0) / params);
    assert.equal(b.targetSparsity, ls[0]!.targetSparsity);
  }
});

test("--owl-lambda widens the spread", async () => {
  const r = await pruneModel({ ...model, out: join(tmp.path, `o${++counter}`), method: "wanda", sparsity: 0.5, sparsityProfile: "owl", owlLambda: 0.2, threads: 1 });
  const t = blockTargets(r);
  assert.ok(Math.abs(Math.max(...t) - Math.min(...t) - 0.4) < 1e-12, `spread of ${t}`);
});

test("owl with N:M, or with magnitude (no calibration forward), is refused naming the field", () => {
  const base = { ...model, out: join(tmp.path, "unused"), sparsityProfile: "owl" };
  assert.throws(() => resolveSpec({ ...base, method: "wanda", pattern: "2:4" }, 1), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "sparsityProfile" && /unstructured/.test(e.message));
  assert.throws(() => resolveSpec({ ...base, method: "magnitude" }, 1), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "sparsityProfile");
  assert.throws(() => resolveSpec({ ...base, method: "wanda", sparsityProfile: "owll" }, 1), /must be one of uniform, owl/);
});
