// Block commits run one after another behind the compute: in the order they were queued, never
// two at once, and none after one has failed (the run is cancelled with the first failure).
import { test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { CommitQueue } from "../../services/worker/src/control/commitQueue.js";

test("tasks run in queue order, one at a time, whatever each one's length", async () => {
  const q = new CommitQueue(() => assert.fail("no task fails"));
  const log: string[] = [];
  let running = 0;
  const task = (name: string, ms: number) => async () => {
    running++;
    assert.equal(running, 1, `${name} overlaps another task`);
    log.push(`${name}+`);
    await sleep(ms);
    log.push(`${name}-`);
    running--;
  };
  const first = q.push(task("a", 30));
  q.push(task("b", 1));
  q.push(task("c", 10));
  await first;
  assert.deepEqual(log.slice(0, 2), ["a+", "a-"]);
  assert.ok(!log.includes("b-"), "a task's promise settles when that task has, not after later ones");
  await q.drain();
  assert.deepEqual(log, ["a+", "a-", "b+", "b-", "c+", "c-"]);
});

test("the first failure is reported once, skips every later task, and drain throws it", async () => {
  const heard: unknown[] = [];
  const q = new CommitQueue((reason) => heard.push(reason));
  const ran: string[] = [];
  q.push(async () => { ran.push("a"); });
  const failing = q.push(async () => { ran.push("b"); throw new Error("disk full"); });
  q.push(async () => { ran.push("c"); throw new Error("second"); });
  await failing;
  assert.equal(heard.length, 1);
  assert.throws(() => q.throwIfFailed(), /disk full/);
  await assert.rejects(q.drain(), /disk full/);
  assert.deepEqual(ran, ["a", "b"], "the task after the failure did not run");
  assert.deepEqual(heard.map((e) => (e as Error).message), ["disk full"]);
  // settled() is for the run's cleanup: it waits, it does not throw.
  await q.settled();
  q.push(async () => { ran.push("d"); });
  await q.settled();
  assert.deepEqual(ran, ["a", "b"], "nothing runs once a task has failed");
});

test("an empty queue drains at once", async () => {
  const q = new CommitQueue(() => {});
  await q.drain();
  q.throwIfFailed();
});
