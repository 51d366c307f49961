// `atvp prune --stats host|graph`: graph runs and records the setting, a bad value and a method
// whose statistics need whole activations are refused naming stats, and `atvp submit` sends
// the setting in the JobSpec (unset stays unset: the engine's default, host).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../support/fixtures.js";
import { runAtvp as atvp } from "../support/atvpCli.js";
import { toJobSpecMessage } from "../../services/cli/src/jobClient.js";
import { toPruneSpec } from "../../services/rpc/jobSpec.js";

const tmp = tempDir("stats-flag");
after(() => tmp.cleanup());

const modelDir = join(tmp.path, "m");
const model = join(modelDir, "model.onnx");
const calib = join(modelDir, "calib.jsonl");

before(() => {
  const r = atvp("gen-model", "--layers", "2", "--hidden", "64", "--fused", "--samples", "3", "--seq-len", "24", "--image-tokens", "10", "--out", modelDir);
  assert.equal(r.status, 0, r.stderr);
});

describe("atvp prune --stats", () => {
  test("--stats graph prunes (ATV) and report.json records it", () => {
    const out = join(tmp.path, "graph");
    const r = atvp("prune", "--model", model, "--calib", calib, "--method", "atv", "--stats", "graph", "--threads", "1", "--out", out);
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { spec: { stats?: string }; totals: { sparsity: number } };
    assert.equal(report.spec.stats, "graph");
    assert.ok(report.totals.sparsity > 0.4);
  });

  test("an unknown setting is refused naming stats", () => {
    const out = join(tmp.path, "bad");
    const r = atvp("prune", "--model", model, "--calib", calib, "--stats", "gpu", "--out", out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /INVALID_ARGUMENT\] stats: must be host or graph, got "gpu"/);
    assert.equal(existsSync(out), false);
  });

  test("--method sparsegpt --stats graph is refused before anything runs", () => {
    const out = join(tmp.path, "sgpt");
    const r = atvp("prune", "--model", model, "--calib", calib, "--method", "sparsegpt", "--stats", "graph", "--out", out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /INVALID_ARGUMENT\] stats: graph is not supported yet for method sparsegpt/);
    assert.equal(existsSync(out), false);
  });

  test("--help lists it; submit sends it in the JobSpec", () => {
    assert.match(atvp("prune", "--help").stdout + atvp("prune", "--help").stderr, /--stats host\|graph/);
    const spec = { model: "m.onnx", calib: "c.jsonl", out: "o", method: "atv" as const };
    assert.equal(toJobSpecMessage({ ...spec, stats: "graph" }, 0, false).stats, "graph");
    assert.equal(toPruneSpec(toJobSpecMessage({ ...spec, stats: "graph" }, 0, false)).stats, "graph");
    assert.equal(toPruneSpec(toJobSpecMessage(spec, 0, false)).stats, undefined);
  });
});
