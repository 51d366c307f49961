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
