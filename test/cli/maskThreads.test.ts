// `atvp prune --mask-threads N`: masks selected on two threads give the same model.onnx.data,
// byte for byte, as on one, for ATV (unstructured), Wanda 2:4 and magnitude (whole-matrix
// threshold); SparseGPT and ATV-SparseGPT 2:4 solved on two solve threads too, and TAMP with its
// densities and AMIA subsets there, with the same report facts and targets; a bad count is
// refused naming it.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CLI, REPO, tempDir } from "../support/fixtures.js";
import { toJobSpecMessage } from "../../services/cli/src/jobClient.js";
import { toPruneSpec } from "../../services/rpc/jobSpec.js";
import { solvePoolLimits } from "../../services/core/src/prune/solvePool.js";

const tmp = tempDir("mask-threads");
after(() => tmp.cleanup());

function atvp(...args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: REPO, encoding: "utf8", timeout: 60_000, stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) throw r.error;
  assert.notEqual(r.signal, "SIGTERM", `atvp ${args.join(" ")} timed out`);
  return { status: r.status, stderr: r.stderr };
}

const modelDir = join(tmp.path, "m");
const model = join(modelDir, "model.onnx");
const calib = join(modelDir, "calib.jsonl");

before(() => {
  const r = atvp("gen-model", "--layers", "2", "--hidden", "96", "--fp16", "--samples", "3", "--seq-len", "24", "--image-tokens", "10", "--out", modelDir);
  assert.equal(r.status, 0, r.stderr);
});

describe("atvp prune --mask-threads", () => {
  const cases: Array<[string, string[]]> = [
    ["atv", ["--method", "atv", "--sparsity", "0.5"]],
    ["wanda-2of4", ["--method", "wanda", "--pattern", "2:4"]],
    ["magnitude", ["--method", "magnitude", "--sparsity", "0.6"]],
    ["sparsegpt", ["--method", "sparsegpt", "--sparsity", "0.5"]],
    ["atv-sparsegpt-2of4", ["--method", "atv-sparsegpt", "--pattern", "2:4"]],
    ["tamp", ["--method", "tamp", "--sparsity", "0.5"]],
  ];
  for (const [name, flags] of cases) {
    test(`${name}: 1 and 2 threads write byte-identical model.onnx.data`, () => {
      const data: Buffer[] = [];
      for (const threads of ["1", "2"]) {
        const out = join(tmp.path, `${name}-${threads}`);
        const r = atvp("prune", "--model", model, "--calib", calib, ...flags, "--mask-threads", threads, "--out", out);
        assert.equal(r.status, 0, r.stderr);
        data.push(readFileSync(join(out, "model.onnx.data")));
      }
      assert.ok(data[0]!.equals(data[1]!), `${name}: model.onnx.data differs between --mask-threads 1 and 2`);
      assert.ok(!data[0]!.equals(readFileSync(join(modelDir, "model.onnx.data"))), "something was pruned");
      if (name.includes("sparsegpt") || name === "tamp") {
        // SparseGPT's relativeError: its two quadratic forms run on different threads at 2, as
        // tasks of their own; TAMP's DAS targets come from densities computed on the threads.
        const facts = ["1", "2"].map((t) => (JSON.parse(readFileSync(join(tmp.path, `${name}-${t}`, "report.json"), "utf8")) as { layers: Array<{ facts?: unknown; targetSparsity: number }> }).layers.map((l) => [l.facts, l.targetSparsity]));
        assert.equal(facts[0]!.length, 14);
        assert.deepEqual(facts[1], facts[0]);
      }
    });
  }

  test("sparsegpt on a model wide enough that each sample's MLP-input Hessian rows go to the threads: same bytes and facts", () => {
    const wide = join(tmp.path, "wide");
    const g = atvp("gen-model", "--layers", "1", "--hidden", "256", "--samples", "2", "--seq-len", "24", "--image-tokens", "8", "--out", wide);
    assert.equal(g.status, 0, g.stderr);
    // down_proj's input is 704 wide: at least 20 attended tokens x 704·705/2 entries is past the limit.
    assert.ok(20 * ((704 * 705) / 2) >= solvePoolLimits.rowsWork);
    const outs = ["1", "2"].map((threads) => {
      const out = join(tmp.path, `wide-${threads}`);
      const r = atvp("prune", "--model", join(wide, "model.onnx"), "--calib", join(wide, "calib.jsonl"), "--method", "sparsegpt", "--mask-threads", threads, "--out", out);
      assert.equal(r.status, 0, r.stderr);
      return { data: readFileSync(join(out, "model.onnx.data")), report: JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { layers: Array<{ facts?: unknown }> } };
    });
    assert.ok(outs[0]!.data.equals(outs[1]!.data));
    assert.deepEqual(outs[1]!.report.layers.map((l) => l.facts), outs[0]!.report.layers.map((l) => l.facts));
  });

  test("the count travels in the job spec to cluster workers (unset stays unset: the default)", () => {
    const spec = { model: "m.onnx", calib: "c.jsonl", out: "o", method: "atv" as const, sparsity: 0.5 };
    assert.equal(toPruneSpec(toJobSpecMessage({ ...spec, maskThreads: 2 }, 0, false)).maskThreads, 2);
    assert.equal(toPruneSpec(toJobSpecMessage(spec, 0, false)).maskThreads, undefined);
  });

  test("--mask-threads past the machine's cores is clamped to them with a warning (each thread's kernel costs memory), same bytes", () => {
    const outs = ["1", "1000"].map((threads) => {
      const out = join(tmp.path, `clamped-${threads}`);
      const r = atvp("prune", "--model", model, "--calib", calib, "--mask-threads", threads, "--out", out);
      assert.equal(r.status, 0, r.stderr);
      return { r, data: readFileSync(join(out, "model.onnx.data")) };
    });
    assert.doesNotMatch(outs[0]!.r.stderr, /--mask-threads/);
    assert.match(outs[1]!.r.stderr, new RegExp(`warning: --mask-threads 1000 is more than this machine's ${availableParallelism()} cores; using ${availableParallelism()}`));
    assert.ok(outs[0]!.data.equals(outs[1]!.data));
  });

  test("--mask-threads 0 is refused naming maskThreads", () => {
    const r = atvp("prune", "--model", model, "--calib", calib, "--mask-threads", "0", "--out", join(tmp.path, "zero"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /INVALID_ARGUMENT\] maskThreads: must be a positive integer/);
  });
});
