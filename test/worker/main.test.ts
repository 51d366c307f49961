// The worker process entry: one JSON ready line on stdout once it listens, /metrics on the
// asked port, and a clean exit on SIGTERM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { REPO } from "../support/fixtures.js";
import { withTimeout, workerClient } from "./harness.js";

test("main.js prints its ready line, serves, and exits 0 on SIGTERM", async () => {
  const child = spawn(process.execPath, [join(REPO, "dist/services/worker/src/main.js"), "--listen", "127.0.0.1:0", "--id", "proc", "--threads", "1", "--metrics-port", "0", "--memory", "4096", "--insecure"], { stdio: ["ignore", "pipe", "pipe"] });
  try {
    const lines = createInterface({ input: child.stdout! });
    const first = await withTimeout(new Promise<string>((resolve) => lines.once("line", resolve)), 15_000, "ready line");
    const ready = JSON.parse(first) as { ready: boolean; address: string; metricsPort: number; pid: number };
    assert.equal(ready.ready, true);
    assert.equal(ready.pid, child.pid);
    assert.match(ready.address, /^127\.0\.0\.1:\d+$/);
    const client = workerClient(ready.address);
    const info = await client.getInfo({});
    client.close();
    assert.equal(info.id, "proc");
    assert.equal(info.memoryBytes, 4096n);
    assert.equal((await fetch(`http://127.0.0.1:${ready.metricsPort}/healthz`)).status, 200);
    const exit = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    let more = "";
    lines.on("line", (l) => (more += l));
    child.kill("SIGTERM");
    assert.equal(await withTimeout(exit, 10_000, "exit on SIGTERM"), 0);
    assert.equal(more, "", "exactly one line on stdout");
  } finally {
    child.kill("SIGKILL");
  }
});
