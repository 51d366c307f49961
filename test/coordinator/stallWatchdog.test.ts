// The coordinator's progress deadline on a shard stream: silence past the timeout fires it;
// messages keep it quiet; a coordinator that was itself frozen gives the worker a fresh window.
import { test } from "node:test";
import assert from "node:assert/strict";
import { heartbeatMs, StallWatchdog } from "../../services/coordinator/src/stallWatchdog.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`${what} within ${ms} ms`);
    await sleep(5);
  }
}

test("silence past the timeout fires once; messages keep the watchdog quiet", async () => {
  const fired: number[] = [];
  const quiet = new StallWatchdog(100, (ms) => fired.push(ms));
  const end = Date.now() + 400;
  while (Date.now() < end) {
    quiet.alive();
    await sleep(10);
  }
  quiet.stop();
  assert.deepEqual(fired, []);

  const stalls: number[] = [];
  const silent = new StallWatchdog(100, (ms) => stalls.push(ms));
  await until(() => stalls.length > 0, 10_000, "the stall");
  await sleep(200);
  silent.stop();
  assert.equal(stalls.length, 1);
  assert.ok(stalls[0]! > 100);
});

test("a coordinator frozen past the timeout does not blame the worker for its own silence", async () => {
  const fired: number[] = [];
  const w = new StallWatchdog(100, (ms) => fired.push(ms));
  const end = performance.now() + 300;
  while (performance.now() < end) { /* this process is frozen: the worker's messages would wait in the socket */ }
  await sleep(30);
  assert.deepEqual(fired, []);
  w.stop();
});

test("heartbeats: several per stall timeout, at most every 10 s", () => {
  assert.equal(heartbeatMs(120_000), 10_000);
  assert.equal(heartbeatMs(3000), 500);
  assert.equal(heartbeatMs(1), 50);
});
