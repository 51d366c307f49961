// `atvp cluster up --stall-timeout S --keep-work` hands both to the coordinator it starts, and
// `atvp submit --keep-work` keeps that job's work folder.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { upSettings } from "../../services/cli/src/commands/cluster.js";
import { CLI, tempDir } from "../support/fixtures.js";

const tmp = tempDir("cluster-stall-cli");
const clusterDir = join(tmp.path, "cluster");
after(() => {
  if (existsSync(join(clusterDir, "cluster.json"))) atvp(["cluster", "down", "--dir", clusterDir]);
  tmp.cleanup();
});

function atvp(args: string[], timeout = 120_000) {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: tmp.path, encoding: "utf8", timeout, stdio: ["ignore", "pipe", "pipe"] });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("cluster up: --stall-timeout and --keep-work become the coordinator's flags; a bad value names the flag", () => {
  assert.deepEqual(upSettings({ "stall-timeout": "5", "keep-work": true }).coordinatorFlags, ["--stall-timeout", "5", "--keep-work"]);
  assert.deepEqual(upSettings({}).coordinatorFlags, []);
  assert.throws(() => upSettings({ "stall-timeout": "-1" }), /--stall-timeout.*must be > 0 seconds/);
  assert.throws(() => upSettings({ "stall-timeout": "soon" }), /--stall-timeout.*expects a number/);
});

test("cluster up --stall-timeout 30: the coordinator runs with it; submit --keep-work keeps the job's work folder", () => {
  assert.equal(atvp(["gen-model", "--layers", "2", "--hidden", "64", "--out", "m"]).status, 0);
  const up = atvp(["cluster", "up", "--workers", "1", "--dir", clusterDir, "--allow-root", tmp.path, "--threads", "1", "--stall-timeout", "30"]);
  assert.equal(up.status, 0, up.stderr);
  const cluster = JSON.parse(readFileSync(join(clusterDir, "cluster.json"), "utf8"));
  const cmdline = readFileSync(`/proc/${cluster.coordinatorPid}/cmdline`, "utf8").split("\0");
  assert.equal(cmdline[cmdline.indexOf("--stall-timeout") + 1], "30");
  assert.ok(!cmdline.includes("--keep-work"));

  const submit = atvp(["submit", "--cluster-dir", clusterDir, "--model", join(tmp.path, "m/model.onnx"), "--calib", join(tmp.path, "m/calib.jsonl"),
    "--method", "wanda", "--sparsity", "0.5", "--out", join(tmp.path, "out"), "--keep-work", "--wait"]);
  assert.equal(submit.status, 0, submit.stderr);
  const id = submit.stdout.split("\n")[0]!.trim();
  assert.deepEqual(readdirSync(join(clusterDir, "jobs", id, "blocks")).sort(), ["0.json", "1.json"]);
  assert.equal(atvp(["cluster", "down", "--dir", clusterDir]).status, 0);
});
