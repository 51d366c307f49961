// Execution provider choice. This machine has no CUDA provider libraries: "auto" must fall back
// to CPU with a warning and give the CPU bytes; "cuda" must fail clearly and leave no output.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { RuntimeError } from "../../services/core/src/errors.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("device");
after(() => tmp.cleanup());

test("--device auto falls back to CPU with a warning; --device cuda fails naming the block and the fix", async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 2, hidden: 64, seed: 5 });
  const base = { model: g.modelPath, calib: g.calibPath, method: "atv" as const, sparsity: 0.5, threads: 1 };
  await pruneModel({ ...base, out: join(tmp.path, "cpu"), device: "cpu" });
  const warnings: string[] = [];
  await pruneModel({ ...base, out: join(tmp.path, "auto"), device: "auto" }, { warn: (m) => warnings.push(m) });
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /CUDA execution provider unavailable.*falling back to CPU/);
  assert.ok(readFileSync(join(tmp.path, "auto/model.onnx.data")).equals(readFileSync(join(tmp.path, "cpu/model.onnx.data"))));
  await assert.rejects(pruneModel({ ...base, out: join(tmp.path, "cuda"), device: "cuda" }),
    (e: unknown) => e instanceof RuntimeError && /layers\.0/.test(e.message) && /onnxruntime-node-install=cuda12/.test(e.message));
  assert.ok(!existsSync(join(tmp.path, "cuda/model.onnx")));
});
