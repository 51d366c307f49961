// bench/blockFigures.ts (what bench/gpu.sh runs on CUDA) on CPU, on a tiny generated model: one
// line per block and a totals line for each statistics setting, every figure measured (no
// nulls), and graph statistics copying fewer bytes out of onnxruntime than host statistics.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { REPO, tempDir } from "../support/fixtures.js";
import { runAtvp as atvp } from "../support/atvpCli.js";

const MODULE = join(REPO, "dist/bench/blockFigures.js");
const LAYERS = 2;

const tmp = tempDir("block-figures");
after(() => tmp.cleanup());
const modelDir = join(tmp.path, "m");

before(() => {
  const r = atvp("gen-model", "--layers", String(LAYERS), "--hidden", "64", "--intermediate", "176", "--attention", "gqa", "--heads", "4", "--kv-heads", "2",
    "--samples", "3", "--seq-len", "24", "--image-tokens", "10", "--out", modelDir);
  assert.equal(r.status, 0, r.stderr);
});

type Line = Record<string, unknown>;

function figures(...args: string[]): { status: number | null; lines: Line[]; stderr: string } {
  const r = spawnSync(process.execPath, [MODULE, "--model", join(modelDir, "model.onnx"), "--calib", join(modelDir, "calib.jsonl"), ...args], {
    cwd: REPO, encoding: "utf8", timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, lines: r.stdout.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Line), stderr: r.stderr };
}

function positive(line: Line, key: string): number {
  const v = line[key];
  assert.ok(typeof v === "number" && Number.isFinite(v) && v > 0, `${key} = ${JSON.stringify(v)} in ${JSON.stringify(line)}`);
  return v;
}

test("--device cpu, --stats host and graph: measured figures per block, graph copies fewer bytes", () => {
  const runs = new Map<string, Line[]>();
  for (const stats of ["host", "graph"]) {
    const r = figures("--device", "cpu", "--stats", stats, "--method", "atv", "--threads", "1");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.lines.length, LAYERS + 1, "a line per block and a totals line");
    for (const line of r.lines) {
      assert.equal(line.bench, "gpu");
      assert.equal(line.device, "cpu");
      assert.equal(line.stats, stats);
      for (const key of ["seconds", "tokensPerSecond", "maskSeconds", "hostBytes", "weightBytes"]) positive(line, key);
    }
    const blocks = r.lines.slice(0, LAYERS);
    assert.deepEqual(blocks.map((l) => l.block), [0, 1]);
    assert.deepEqual(blocks.map((l) => l.label), ["layers.0", "layers.1"]);
    const totals = r.lines[LAYERS]!;
    assert.equal(totals.block, undefined);
    assert.equal(totals.blocks, LAYERS);
    assert.equal(totals.method, "atv");
    for (const key of ["maskSeconds", "hostBytes", "weightBytes"]) {
      assert.equal(totals[key], blocks.reduce((a, l) => a + (l[key] as number), 0), `totals ${key} sums the blocks`);
    }
    runs.set(stats, r.lines);
  }
  const host = runs.get("host")!;
  const graph = runs.get("graph")!;
  host.forEach((h, i) => {
    const g = graph[i]!;
    assert.ok(positive(g, "hostBytes") < positive(h, "hostBytes"), `line ${i}: graph ${String(g.hostBytes)} < host ${String(h.hostBytes)}`);
    assert.equal(g.weightBytes, h.weightBytes);
  });
  // host statistics copy every linear's whole input activation: 3 samples x 24 tokens x
  // (64 + 64 + 64 + 176 input channels) float32 per block.
  assert.equal(host[0]!.hostBytes, 3 * 24 * (64 + 64 + 64 + 176) * 4);
});

test("a bad --device or a method that cannot use --stats graph is refused, naming the flag", () => {
  const bad = figures("--device", "gpu", "--stats", "host");
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /blockFigures: error \[INVALID_ARGUMENT\] --device: must be cpu, cuda or auto, got "gpu"/);
  const sgpt = figures("--device", "cpu", "--stats", "graph", "--method", "sparsegpt");
  assert.equal(sgpt.status, 1);
  assert.match(sgpt.stderr, /\[INVALID_ARGUMENT\] --stats: graph is not supported yet for method sparsegpt/);
});
