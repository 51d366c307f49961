/**
 * The coordinator's NATS state layer against a real nats-server on loopback (JetStream, file
 * store in a temp folder): compare-and-set job updates, replayable event watches, and what
 * happens when NATS goes away mid-job and comes back on the same port and store.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import type { NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";
import {
  JobEventSchema, JobSchema, JobState, type Job, type JobEvent,
} from "../../services/gen/atvprune/v1/job_pb.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { connectNats } from "../../services/coordinator/src/state/natsConnection.js";
import { JobStore } from "../../services/coordinator/src/state/jobStore.js";
import { EventLog } from "../../services/coordinator/src/state/eventLog.js";
import {
  JobExistsError, JobNotFoundError, NatsAuthError, NatsServerError,
} from "../../services/coordinator/src/state/errors.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";
import { tempDir } from "../support/fixtures.js";

const WAIT_MS = 15_000;

function withTimeout<T>(p: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result after ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function newJob(id: string, blocksTotal = 10): Job {
  return create(JobSchema, { id, state: JobState.PENDING, blocksTotal, spec: { model: "m.onnx", method: "atv" } });
}

function stateEvent(jobId: string, state: JobState, reason = ""): JobEvent {
  return create(JobEventSchema, {
    jobId, timeUnixMs: BigInt(Date.now()), event: { case: "stateChanged", value: { state, reason } },
  });
}

function blockEvent(jobId: string, block: number): JobEvent {
  return create(JobEventSchema, {
    jobId, timeUnixMs: BigInt(Date.now()), event: { case: "blockFinished", value: { block, label: `layer.${block}` } },
  });
}

/** What a test compares events by: the job, the kind and the block or state. */
function describeEvent(e: JobEvent): string {
  switch (e.event.case) {
    case "stateChanged": return `${e.jobId}:${JobState[e.event.value.state]}`;
    case "blockFinished": return `${e.jobId}:block${e.event.value.block}`;
    default: return `${e.jobId}:${e.event.case ?? "none"}`;
  }
}

/** Resolves at the connection's next status of this type (e.g. the disconnect after a stop). */
async function nextStatus(nc: NatsConnection, type: string): Promise<void> {
  for await (const s of nc.status()) if (s.type === type) return;
}

async function collectWatch(log: EventLog, jobId: string, seen: JobEvent[] = []): Promise<JobEvent[]> {
  for await (const e of log.watch(jobId)) seen.push(e);
  return seen;
}

async function waitUntil(cond: () => boolean, what: string, ms = WAIT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: still not true after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("coordinator state on NATS JetStream", () => {
  let tmp: ReturnType<typeof tempDir>;
  const servers: NatsServerHandle[] = [];
  const conns: NatsConnection[] = [];

  async function server(name: string, auth: { user?: string; password?: string } = {}): Promise<NatsServerHandle> {
    const srv = await startNatsServer({ dir: `${tmp.path}/${name}`, ...auth });
    servers.push(srv);
    return srv;
  }

  async function conn(srv: NatsServerHandle, auth: { user?: string; password?: string } = {}): Promise<NatsConnection> {
    const nc = await connectNats({ servers: srv.url, reconnectTimeWaitMs: 100, name: "atvp-state-test", ...auth });
    conns.push(nc);
    return nc;
  }

  before(() => {
    tmp = tempDir("nats-state");
  });

  after(async () => {
    for (const nc of conns) await nc.close().catch(() => {});
    for (const srv of servers) await srv.stop();
    tmp.cleanup();
  });

  test("create, get and list round-trip jobs; a taken id, an unknown id and a bad id are told apart", async () => {
    const nc = await conn(await server("basic"));
    const store = await JobStore.open(nc);
    const a = await store.create(newJob("job-a", 12));
    assert.ok(a.createdUnixMs > 0n, "create stamps the creation time");
    await store.create(newJob("job-b"));
    await assert.rejects(store.create(newJob("job-a")), JobExistsError);

    const fresh = await JobStore.open(nc);
    const got = await fresh.get("job-a");
    assert.equal(got?.blocksTotal, 12);
    assert.equal(got?.spec?.model, "m.onnx");
    assert.equal(await fresh.get("job-none"), undefined);
    await assert.rejects(fresh.create(newJob("job-b")), JobExistsError, "the bucket, not only the local copy, refuses the id");
    await assert.rejects(fresh.update("job-none", (j) => void (j.blocksDone = 1)), JobNotFoundError);
    await assert.rejects(fresh.get("bad.id"), InvalidArgumentError);
    assert.deepEqual((await fresh.list()).map((j) => j.id), ["job-a", "job-b"]);
    await store.close();
    await fresh.close();
  });

  test("update is compare-and-set: 20 parallel increments from two connections all land", async () => {
    const srv = await server("cas");
    const [nc1, nc2] = [await conn(srv), await conn(srv)];
    const s1 = await JobStore.open(nc1);
    const s2 = await JobStore.open(nc2);
    await s1.create(newJob("job-cas", 20));
    await s2.get("job-cas"); // both now hold a copy at the same revision, so they must collide
    const inc = (j: Job) => void (j.blocksDone += 1);
    await withTimeout(Promise.all([
      ...Array.from({ length: 10 }, () => s1.update("job-cas", inc)),
      ...Array.from({ length: 10 }, () => s2.update("job-cas", inc)),
    ]), "parallel updates");
    const fresh = await JobStore.open(await conn(srv));
    assert.equal((await fresh.get("job-cas"))?.blocksDone, 20);
    assert.equal((await s1.get("job-cas"))?.blocksDone, 20);
    for (const s of [s1, s2, fresh]) await s.close();
  });

  test("a job written before a NATS restart is still there after it (file storage)", async () => {
    const srv = await server("persist");
    const nc = await conn(srv);
    const store = await JobStore.open(nc);
    await store.create(newJob("job-p"));
    await store.update("job-p", (j) => void (j.state = JobState.RUNNING));
    await store.close();
    await nc.close();
    await srv.restart();
    const after = await JobStore.open(await conn(srv));
    const job = await withTimeout(after.get("job-p"), "get after restart");
    assert.equal(job?.state, JobState.RUNNING);
    await after.close();
  });

  test("while NATS is down, writes apply locally and queue; after its restart the bucket and stream catch up in order, once", async () => {
    const srv = await server("outage");
    const nc = await conn(srv);
    const store = await JobStore.open(nc);
    const log = await EventLog.open(nc);
    await store.create(newJob("job-o", 5));
    log.publish(stateEvent("job-o", JobState.RUNNING));
    await log.flushed({ timeoutMs: WAIT_MS });

    const down = nextStatus(nc, "disconnect");
    await srv.stop();
    await withTimeout(down, "disconnect");

    const t0 = Date.now();
    for (let b = 0; b < 5; b++) {
      const job = await store.update("job-o", (j) => void (j.blocksDone += 1));
      assert.equal(job.blocksDone, b + 1);
      log.publish(blockEvent("job-o", b));
    }
    await store.update("job-o", (j) => void (j.state = JobState.SUCCEEDED));
    log.publish(stateEvent("job-o", JobState.SUCCEEDED));
    await store.create(newJob("job-offline"));
    assert.ok(Date.now() - t0 < 1000, `writes while NATS is down do not wait on it (${Date.now() - t0} ms)`);

    // Visible locally: reads, the listing, the queued events.
    assert.equal((await store.get("job-o"))?.blocksDone, 5);
    assert.deepEqual((await store.list()).map((j) => j.id).sort(), ["job-o", "job-offline"]);
    assert.deepEqual(store.pending().sort(), ["job-o", "job-offline"]);
    assert.deepEqual(log.pending("job-o").map(describeEvent), [
      "job-o:block0", "job-o:block1", "job-o:block2", "job-o:block3", "job-o:block4", "job-o:SUCCEEDED",
    ]);

    await srv.restart();
    await withTimeout(Promise.all([store.flushed({ timeoutMs: WAIT_MS }), log.flushed({ timeoutMs: WAIT_MS })]), "catch-up");
    assert.deepEqual(store.pending(), []);
    assert.deepEqual(log.pending(), []);

    // A fresh connection sees the latest state and every event exactly once, in order.
    const nc2 = await conn(srv);
    const store2 = await JobStore.open(nc2);
    const job = await store2.get("job-o");
    assert.equal(job?.blocksDone, 5);
    assert.equal(job?.state, JobState.SUCCEEDED);
    assert.ok(await store2.get("job-offline"), "a job created while NATS was down reaches the bucket");
    const log2 = await EventLog.open(nc2);
    const events = await withTimeout(collectWatch(log2, "job-o"), "replay");
    assert.deepEqual(events.map(describeEvent), [
      "job-o:RUNNING", "job-o:block0", "job-o:block1", "job-o:block2", "job-o:block3", "job-o:block4", "job-o:SUCCEEDED",
    ]);
    const info = await (await jetstreamManager(nc2)).streams.info(log2.stream);
    assert.equal(info.state.messages, 7, "no event was stored twice");
    for (const c of [store, log, store2, log2]) await c.close();
  });

  test("a NATS that comes back without its store gets the known jobs and the queued events back", async () => {
    const srv = await server("lost-store");
    const nc = await conn(srv);
    const store = await JobStore.open(nc);
    const log = await EventLog.open(nc);
    await store.create(newJob("job-l", 4));
    const down = nextStatus(nc, "disconnect");
    await srv.stop();
    await withTimeout(down, "disconnect");
    rmSync(`${tmp.path}/lost-store/jetstream`, { recursive: true, force: true });
    log.publish(stateEvent("job-l", JobState.RUNNING));
    const back = nextStatus(nc, "reconnect");
    await srv.restart();
    await withTimeout(back, "reconnect");
    await store.update("job-l", (j) => void (j.blocksDone = 4));
    log.publish(stateEvent("job-l", JobState.SUCCEEDED));
    await withTimeout(Promise.all([store.flushed({ timeoutMs: WAIT_MS }), log.flushed({ timeoutMs: WAIT_MS })]), "re-seeding");

    const nc2 = await conn(srv);
    const job = await (await JobStore.open(nc2)).get("job-l");
    assert.equal(job?.blocksDone, 4);
    assert.equal(job?.blocksTotal, 4);
    const events = await withTimeout(collectWatch(await EventLog.open(nc2), "job-l"), "replay");
    assert.deepEqual(events.map(describeEvent), ["job-l:RUNNING", "job-l:SUCCEEDED"]);
    await store.close();
    await log.close();
  });

  test("watch replays the history, then follows live events, and ends after the terminal one", async () => {
    const nc = await conn(await server("watch"));
    const log = await EventLog.open(nc);
    log.publish(stateEvent("job-w", JobState.RUNNING));
    log.publish(blockEvent("job-w", 0));
    log.publish(blockEvent("job-other", 0));
    log.publish(stateEvent("job-other", JobState.FAILED, "not this one"));
    await log.flushed({ timeoutMs: WAIT_MS });

    const seen: JobEvent[] = [];
    const done = withTimeout(collectWatch(log, "job-w", seen), "watch to the end");
    await waitUntil(() => seen.length === 2, "history replayed");
    log.publish(blockEvent("job-w", 1));
    await waitUntil(() => seen.length === 3, "live event followed");
    log.publish(stateEvent("job-w", JobState.CANCELLED, "by request"));
    log.publish(blockEvent("job-w", 2)); // after the terminal event: never yielded
    const events = await done;
    assert.deepEqual(events.map(describeEvent), ["job-w:RUNNING", "job-w:block0", "job-w:block1", "job-w:CANCELLED"]);

    // A watch that is aborted ends quietly.
    const abort = new AbortController();
    const idle: JobEvent[] = [];
    const idleDone = (async () => {
      for await (const e of log.watch("job-idle", { signal: abort.signal })) idle.push(e);
    })();
    setTimeout(() => abort.abort(), 200);
    await withTimeout(idleDone, "aborted watch");
    assert.deepEqual(idle, []);
    await log.close();
  });

  test("watch keeps going across a NATS restart: no event repeated, none skipped", async () => {
    const srv = await server("watch-restart");
    const nc = await conn(srv);
    const log = await EventLog.open(nc);
    const seen: JobEvent[] = [];
    const done = withTimeout(collectWatch(log, "job-r", seen), "watch across restart", 30_000);
    log.publish(stateEvent("job-r", JobState.RUNNING));
    log.publish(blockEvent("job-r", 0));
    await waitUntil(() => seen.length === 2, "events before the restart");

    const down = nextStatus(nc, "disconnect");
    await srv.stop();
    await withTimeout(down, "disconnect");
    log.publish(blockEvent("job-r", 1)); // queued while NATS is down
    await srv.restart();
    log.publish(blockEvent("job-r", 2));
    log.publish(stateEvent("job-r", JobState.SUCCEEDED));
    const events = await done;
    assert.deepEqual(events.map(describeEvent), [
      "job-r:RUNNING", "job-r:block0", "job-r:block1", "job-r:block2", "job-r:SUCCEEDED",
    ]);
    await log.close();
  });

  test("a server with user/password (or a token) refuses clients without them and serves clients with them", async () => {
    const auth = { user: "atvp", password: "s3cret pass" };
    const srv = await server("auth", auth);
    await assert.rejects(connectNats({ servers: srv.url }), NatsAuthError);
    await assert.rejects(connectNats({ servers: srv.url, user: "atvp", password: "wrong" }), NatsAuthError);
    const nc = await conn(srv, auth);
    const store = await JobStore.open(nc);
    await store.create(newJob("job-auth"));
    assert.equal((await store.get("job-auth"))?.id, "job-auth");
    await store.close();

    const tokenSrv = await startNatsServer({ dir: `${tmp.path}/auth-token`, token: "t0ken" });
    servers.push(tokenSrv);
    await assert.rejects(connectNats({ servers: tokenSrv.url, token: "other" }), NatsAuthError);
    conns.push(await connectNats({ servers: tokenSrv.url, token: "t0ken" }));
  });

  test("startNatsServer says how to install nats-server when it is not on PATH", async () => {
    const path = process.env.PATH;
    process.env.PATH = `${tmp.path}/no-such-bin`;
    try {
      await assert.rejects(startNatsServer({ dir: `${tmp.path}/missing` }), (err: unknown) =>
        err instanceof NatsServerError && /apt-get install -y nats-server/.test(err.message));
    } finally {
      process.env.PATH = path;
    }
  });
});
