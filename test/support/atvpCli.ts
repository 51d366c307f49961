// Runs the built CLI (dist) as a child process from the repository root, as a user would.
import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { CLI, REPO } from "./fixtures.js";

export function runAtvp(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: REPO, encoding: "utf8", timeout: 60_000, stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) throw r.error;
  assert.notEqual(r.signal, "SIGTERM", `atvp ${args.join(" ")} timed out`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
