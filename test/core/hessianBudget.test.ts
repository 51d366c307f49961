/**
 * SparseGPT's Hessians under a memory budget: calibrating one input's Hessian at a time (one
 * dense forward each) gives exactly the bits of calibrating them all in one forward.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("hessian-budget");
let model: { model: string; calib: string };
let counter = 0;

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 2, hidden: 64, samples: 4, seqLen: 32, imageTokens: 12, seed: 4 });
  model = { model: g.modelPath, calib: g.calibPath };
});
after(() => tmp.cleanup());

for (const method of ["sparsegpt", "atv-sparsegpt"]) {
  test(`${method}: one Hessian per forward (budget 1 byte) is bit-identical to all at once`, async () => {
    const run = async (accumulatorBudgetBytes?: number) => {
      const out = join(tmp.path, `o${++counter}`);
      const report = await pruneModel({ ...model, out, method, sparsity: 0.5, alpha: 2, threads: 1 }, { accumulatorBudgetBytes });
      return { data: readFileSync(join(out, "model.onnx.data")), layers: report.layers, blocks: report.blocks.map((b) => ({ ...b, seconds: 0, tokensPerSecond: 0 })) };
    };
    const together = await run();
    const apart = await run(1);
    assert.ok(apart.data.equals(together.data));
    assert.deepEqual(apart.layers, together.layers);
    assert.deepEqual(apart.blocks, together.blocks);
  });
}
