// bench/gpu.sh is run by hand on a GPU host, never in CI; here: it parses, and without a CUDA
// provider it stops at once with a clear message (before generating an 8B-shaped model).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { REPO, tempDir } from "../support/fixtures.js";

const SCRIPT = join(REPO, "bench/gpu.sh");

function hasCudaProvider(): boolean {
  const bin = join(REPO, "node_modules/onnxruntime-node/bin");
  if (!existsSync(bin)) return false;
  return readdirSync(bin, { recursive: true }).some((f) => String(f).includes("libonnxruntime_providers_cuda.so"));
}

test("bench/gpu.sh parses (bash -n)", () => {
  const r = spawnSync("bash", ["-n", SCRIPT], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
});

test("bench/gpu.sh refuses to run without a CUDA provider, naming the install step", { skip: hasCudaProvider() && "this host has the CUDA provider" }, () => {
  const tmp = tempDir("gpu-sh");
  try {
    const work = join(tmp.path, "gpu");
    const r = spawnSync("bash", [SCRIPT], {
      cwd: REPO, encoding: "utf8", timeout: 60_000,
      env: { ...process.env, GPU_SKIP_SETUP: "1", GPU_WORK: work },
    });
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /no CUDA provider found/);
    assert.match(r.stderr, /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install\.js/);
    assert.ok(!existsSync(work), "nothing generated");
  } finally {
    tmp.cleanup();
  }
});

test("bench/gpu.sh refuses a GPU_DEVICE other than cuda or cpu", () => {
  const r = spawnSync("bash", [SCRIPT], { cwd: REPO, encoding: "utf8", timeout: 60_000, env: { ...process.env, GPU_SKIP_SETUP: "1", GPU_DEVICE: "gpu" } });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /GPU_DEVICE must be cuda or cpu, got 'gpu'/);
});

// Every step of the script (smoke prune, slice, both statistics settings, the CLI prune and the
// cost table) on the CPU provider at a toy shape: what a GPU host would run, minus the GPU.
test("bench/gpu.sh with GPU_DEVICE=cpu runs every step and prints every figure, measured", () => {
  const tmp = tempDir("gpu-sh-cpu");
  try {
    const r = spawnSync("bash", [SCRIPT], {
      cwd: REPO, encoding: "utf8", timeout: 300_000,
      env: {
        ...process.env, GPU_SKIP_SETUP: "1", GPU_DEVICE: "cpu", GPU_WORK: join(tmp.path, "gpu"), GPU_THREADS: "1",
        GPU_LAYERS: "2", GPU_HIDDEN: "128", GPU_INTERMEDIATE: "256", GPU_HEADS: "4", GPU_KV_HEADS: "2", GPU_SAMPLES: "2", GPU_SEQ_LEN: "32",
      },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /GPU_DEVICE=cpu: every step runs on onnxruntime's CPU provider/);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as Record<string, number | string>);
    const gpu = lines.filter((l) => l.bench === "gpu");
    // Per statistics setting: one line per block, then the total.
    assert.equal(gpu.length, 6);
    for (const stats of ["host", "graph"]) {
      const mine = gpu.filter((l) => l.stats === stats);
      assert.deepEqual(mine.map((l) => l.block), [0, 1, undefined]);
      for (const l of mine) {
        assert.equal(l.device, "cpu");
        for (const k of ["seconds", "tokensPerSecond", "maskSeconds", "hostBytes", "weightBytes"]) assert.ok((l[k] as number) > 0, `${stats} ${k} = ${l[k]}`);
      }
      assert.equal(mine[2]!.tokens, 2 * 32);
    }
    const total = (stats: string) => gpu.find((l) => l.stats === stats && l.block === undefined)!;
    assert.ok((total("graph").hostBytes as number) < (total("host").hostBytes as number));
    const prune = lines.find((l) => l.bench === "gpu_prune")!;
    assert.deepEqual([prune.device, prune.method, prune.blocks, prune.samples, prune.sparsity], ["cpu", "atv", 2, 2, 0.5]);
    const cost = lines.find((l) => l.bench === "gpu_cost_table")!;
    assert.deepEqual([cost.device, cost.method], ["cpu", "atv"]);
    const terms = [cost.secondsPerTokenParam, cost.secondsPerSample, cost.secondsPerCompressUnit] as number[];
    assert.ok(terms.every((t) => t >= 0) && terms.some((t) => t > 0), JSON.stringify(cost));
    assert.equal(lines.length, 8);
  } finally {
    tmp.cleanup();
  }
});
