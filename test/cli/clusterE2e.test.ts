// The documented cluster workflow through the real CLI: `atvp cluster up`, `atvp submit --wait`,
// `atvp status --json`, `atvp watch`, `atvp cluster down`, and the result equal to `atvp prune`.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { CLI, tempDir } from "../support/fixtures.js";

const tmp = tempDir("cluster-cli");
const clusterDir = join(tmp.path, "cluster");
after(() => {
  if (existsSync(join(clusterDir, "cluster.json"))) atvp(["cluster", "down", "--dir", clusterDir]);
  tmp.cleanup();
});

/** Alive and not a zombie (detached children are reparented; a container's init may not reap them). */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

function atvp(args: string[], timeout = 120_000) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: tmp.path, encoding: "utf8", timeout, stdio: ["ignore", "pipe", "pipe"] });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("cluster up, submit --wait, status, watch, cluster down: same model as atvp prune", () => {
  const gen = atvp(["gen-model", "--layers", "4", "--hidden", "64", "--out", "m"]);
  assert.equal(gen.status, 0, gen.stderr);
  const local = atvp(["prune", "--model", "m/model.onnx", "--calib", "m/calib.jsonl", "--method", "wanda", "--sparsity", "0.5", "--out", "local"]);
  assert.equal(local.status, 0, local.stderr);

  const up = atvp(["cluster", "up", "--workers", "2", "--dir", clusterDir, "--allow-root", tmp.path, "--threads", "1"]);
  assert.equal(up.status, 0, up.stderr);
  const cluster = JSON.parse(readFileSync(join(clusterDir, "cluster.json"), "utf8"));
  assert.match(cluster.coordinator, /^127\.0\.0\.1:\d+$/);
  assert.match(cluster.nats, /^nats:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(cluster.workers.length, 2);

  const submit = atvp(["submit", "--coordinator", cluster.coordinator, "--model", join(tmp.path, "m/model.onnx"), "--calib", join(tmp.path, "m/calib.jsonl"),
    "--method", "wanda", "--sparsity", "0.5", "--out", join(tmp.path, "remote"), "--wait"]);
  assert.equal(submit.status, 0, submit.stderr);
  const jobId = submit.stdout.split("\n")[0]!.trim();
  assert.match(jobId, /^job-/);

  const st = atvp(["status", jobId, "--coordinator", cluster.coordinator, "--json"]);
  assert.equal(st.status, 0, st.stderr);
  const status = JSON.parse(st.stdout);
  assert.equal(status.state, "SUCCEEDED");
  assert.equal(status.blocksDone, 4);

  const watch = atvp(["watch", jobId, "--coordinator", cluster.coordinator]);
  assert.equal(watch.status, 0, watch.stderr);
  const events = watch.stdout.trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(events.length >= 4);

  assert.ok(readFileSync(join(tmp.path, "remote/model.onnx.data")).equals(readFileSync(join(tmp.path, "local/model.onnx.data"))));

  const down = atvp(["cluster", "down", "--dir", clusterDir]);
  assert.equal(down.status, 0, down.stderr);
  assert.ok(!existsSync(join(clusterDir, "cluster.json")));
  for (const pid of [cluster.coordinatorPid, cluster.natsPid, ...cluster.workers.map((w: { pid: number }) => w.pid)]) {
    assert.ok(!isRunning(pid), `process ${pid} still running`);
  }
});
