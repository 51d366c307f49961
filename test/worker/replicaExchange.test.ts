// The all-gather of data-parallel calibration (issue 10 §1) over the workers' real data plane:
// three replicas, each on its own worker (its own gRPC server on 127.0.0.1), gather every
// sample's records bit for bit; peers that come late, stop after publishing, move to another
// address or send the wrong samples; the file format and the wire format on their own.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import * as grpc from "@grpc/grpc-js";
import { replicaSamples, type SampleRecord } from "../../services/core/src/pipeline/sampleExchange.js";
import { InvalidArgumentError } from "../../services/core/src/errors.js";
import { GRPC_OPTIONS } from "../../services/rpc/credentials.js";
import { ExchangeError } from "../../services/worker/src/errors.js";
import { GrpcReplicaExchange, type ReplicaExchangeOptions } from "../../services/worker/src/dataplane/replicaExchange.js";
import { ExchangeRegistry } from "../../services/worker/src/dataplane/exchangeRegistry.js";
import { decodeExchangeFile, encodeExchangeFile, exchangePath, writeExchangeFile } from "../../services/worker/src/dataplane/exchangeFile.js";
import { RecordAssembler, recordMessages } from "../../services/worker/src/dataplane/exchangeWire.js";
import { DATA_PLANE_CHANNEL_OPTIONS } from "../../services/worker/src/dataplane/upstreamStates.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { dataClient, withTimeout } from "./harness.js";

const N = 10; // over 3 replicas: [0, 4), [4, 7), [7, 10)
const R = 3;
const TOPICS = ["pool", "stats"];
const GUARD_MS = 30_000;

const tmp = tempDir("exchange");
// Stops every gather still retrying when a test failed, so the file ends.
const ending = new AbortController();
const done = ending.signal;
after(() => {
  ending.abort();
  tmp.cleanup();
});
let dirs = 0;
const newDir = () => join(tmp.path, `d${dirs++}`);

/**
 * The record of sample j: "pool" has one vector whose length differs per sample (token counts
 * do), "stats" three of fixed lengths; values include -0, NaN payloads, infinities, subnormals.
 */
function recordOf(block: number, topic: string, j: number): SampleRecord {
  const lengths = topic === "pool" ? [3 + ((j * 5) % 7)] : [16, 1, 40];
  return lengths.map((n, k) => {
    const v = new Float64Array(n);
    for (let i = 0; i < n; i++) v[i] = Math.sin(block * 1e4 + j * 100 + k * 10 + i) * 10 ** ((i % 9) - 4);
    if (n > 3) {
      v[0] = -0;
      new DataView(v.buffer).setBigUint64(8, 0x7ff8_0000_dead_beefn, true); // NaN with a payload
      v[2] = k % 2 ? -Infinity : 5e-324;
    }
    return v;
  });
}

function ownRecords(block: number, topic: string, r: number): Map<number, SampleRecord> {
  const { first, end } = replicaSamples(N, R, r);
  const own = new Map<number, SampleRecord>();
  for (let j = first; j < end; j++) own.set(j, recordOf(block, topic, j));
  return own;
}

function bytes(v: Float64Array): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

function assertAllRecords(got: SampleRecord[], block: number, topic: string, who: string): void {
  assert.equal(got.length, N, who);
  got.forEach((rec, j) => {
    const want = recordOf(block, topic, j);
    assert.equal(rec.length, want.length, `${who} sample ${j}`);
    rec.forEach((v, k) => assert.ok(v instanceof Float64Array && bytes(v).equals(bytes(want[k]!)), `${who} block ${block} ${topic} sample ${j} vector ${k}: not the same bits`));
  });
}

/** A replica's log lines, and a wait for one that matches. */
class Logs {
  readonly lines: string[] = [];
  private readonly waiting: { pattern: RegExp; resolve: () => void }[] = [];

  readonly push = (line: string): void => {
    this.lines.push(line);
    for (const w of [...this.waiting]) {
      if (w.pattern.test(line)) {
        this.waiting.splice(this.waiting.indexOf(w), 1);
        w.resolve();
      }
    }
  };

  waitFor(pattern: RegExp): Promise<void> {
    if (this.lines.some((l) => pattern.test(l))) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push({ pattern, resolve }));
  }
}

function exchange(r: number, peers: string[], workDir: string, registry: ExchangeRegistry, over: Partial<ReplicaExchangeOptions> & { logs?: Logs } = {}): GrpcReplicaExchange {
  const { logs, ...options } = over;
  return new GrpcReplicaExchange({
    jobId: "job-x", samples: N, slice: { replica: r, replicas: R }, peers, workDir, registry,
    credentials: grpc.credentials.createInsecure(), channelOptions: { ...GRPC_OPTIONS, ...DATA_PLANE_CHANNEL_OPTIONS },
    log: logs?.push ?? (() => {}),
    backoffMs: { initial: 20, max: 200 }, fileCheckMs: 50,
    ...options,
  });
}

async function startWorkers(n: number): Promise<WorkerHandle[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => startWorker({ host: "127.0.0.1", port: 0, id: `x${i}`, threads: 1, log: () => {} })));
}

describe("three replicas on three workers", () => {
  let workers: WorkerHandle[] = [];
  after(async () => { await Promise.all(workers.map((w) => w.close())); });

  test("allGather of 2 topics over 3 blocks: every replica gets every sample's record, bit for bit, over gRPC", async () => {
    workers = await startWorkers(3);
    const peers = workers.map((w) => w.address);
    // A work dir per replica: nothing can come from a peer's file, all of it travels over PullExchange.
    const ex = workers.map((w, r) => exchange(r, peers, newDir(), w.exchanges));
    for (let block = 0; block < 3; block++) {
      const results = await withTimeout(Promise.all(ex.flatMap((e, r) => TOPICS.map((topic) => e.allGather(block, topic, ownRecords(block, topic, r), done)))), GUARD_MS, `block ${block}`);
      results.forEach((got, i) => assertAllRecords(got, block, TOPICS[i % 2]!, `replica ${Math.floor(i / 2)}`));
    }
    // The same call again gives the same bits (a rerun gathers again).
    const again = await withTimeout(Promise.all(ex.map((e, r) => e.allGather(1, "stats", ownRecords(1, "stats", r), done))), GUARD_MS, "again");
    again.forEach((got, r) => assertAllRecords(got, 1, "stats", `replica ${r} again`));
  });

  test("allGather over item shares (a block's linears, uneven ranges) instead of samples, over gRPC", async () => {
    const peers = workers.map((w) => w.address);
    const ex = workers.map((w, r) => exchange(r, peers, newDir(), w.exchanges, { jobId: "job-items" }));
    const shares = { bounds: [0, 1, 4, 5] };
    const item = (i: number): SampleRecord => [Float64Array.of(i, -0), new Float64Array(3 + i).fill(i / 3)];
    const own = (r: number) => new Map(Array.from({ length: shares.bounds[r + 1]! - shares.bounds[r]! }, (_, k) => [shares.bounds[r]! + k, item(shares.bounds[r]! + k)] as const));
    const all = await withTimeout(Promise.all(ex.map((e, r) => e.allGather(0, "compress-0", own(r), done, shares))), GUARD_MS, "items");
    for (const got of all) {
      assert.equal(got.length, 5);
      got.forEach((rec, i) => rec.forEach((v, k) => assert.ok(bytes(v).equals(bytes(item(i)[k]!)), `item ${i} vector ${k}`)));
    }
    // Shares that leave a replica nothing are refused before anything is sent.
    await assert.rejects(ex[0]!.allGather(1, "compress-0", own(0), done, { bounds: [0, 1, 1, 5] }), (e) => e instanceof InvalidArgumentError && /shares/.test(e.message));
  });

  test("post and fetch: a sum passed down the replicas and the last one's fetched by all, bit for bit; a post stands", async () => {
    const peers = workers.map((w) => w.address);
    const dir = newDir();
    const ex = workers.map((w, r) => exchange(r, peers, dir, w.exchanges, { jobId: "job-chain" }));
    const sums = [recordOf(0, "stats", 0), recordOf(0, "stats", 1), recordOf(0, "stats", 2)];
    // Replica 2 asks first: its fetch waits for replica 1, which waits for replica 0.
    const chain = [
      (async () => { await ex[0]!.post(3, "sum-0", sums[0]!, done); return ex[0]!.fetch(3, "sum-0", 2, 3, done); })(),
      (async () => { const prefix = await ex[1]!.fetch(3, "sum-0", 0, 3, done); await ex[1]!.post(3, "sum-0", sums[1]!, done); return [prefix, await ex[1]!.fetch(3, "sum-0", 2, 3, done)]; })(),
      (async () => { const prefix = await ex[2]!.fetch(3, "sum-0", 1, 3, done); await ex[2]!.post(3, "sum-0", sums[2]!, done); return prefix; })(),
    ];
    const [total0, [prefix1, total1], prefix2] = await withTimeout(Promise.all(chain), GUARD_MS, "chain") as [SampleRecord, SampleRecord[], SampleRecord];
    const same = (a: SampleRecord, b: SampleRecord, what: string) => a.forEach((v, k) => assert.ok(bytes(v).equals(bytes(b[k]!)), `${what} vector ${k}`));
    same(prefix1!, sums[0]!, "replica 1's prefix");
    same(prefix2, sums[1]!, "replica 2's prefix");
    same(total0, sums[2]!, "replica 0's total");
    same(total1!, sums[2]!, "replica 1's total");
    // Posting again (a rerun) keeps what was posted: its file.
    await ex[0]!.post(3, "sum-0", sums[2]!, done);
    same(await withTimeout(ex[1]!.fetch(3, "sum-0", 0, 3, done), GUARD_MS, "again"), sums[0]!, "replica 0's post after a second one");
    await assert.rejects(ex[0]!.fetch(3, "sum-0", 0, 3, done), (e) => e instanceof InvalidArgumentError && /from/.test(e.message));
    await withTimeout(assert.rejects(ex[1]!.fetch(3, "sum-0", 2, 2, done), (e) => e instanceof ExchangeError && /has 3 vectors; the other samples have 2/.test(e.message)), GUARD_MS, "vectors");
  });

  test("a replica that joins late: its peers wait for it (its worker does not know the job yet), then all agree", async () => {
    const peers = workers.map((w) => w.address);
    const log = new Logs();
    const early = [0, 1].map((r) => exchange(r, peers, newDir(), workers[r]!.exchanges, { jobId: "job-late", logs: log }));
    const gathering = early.map((e, r) => e.allGather(0, "pool", ownRecords(0, "pool", r), done));
    // Both have asked replica 2 and been told to come back: they wait, they do not fail.
    await withTimeout(log.waitFor(/replica 2: pulling from .* failed \(.*job-late.*\); retrying/), GUARD_MS, "retry logged");
    const late = exchange(2, peers, newDir(), workers[2]!.exchanges, { jobId: "job-late" });
    const all = await withTimeout(Promise.all([...gathering, late.allGather(0, "pool", ownRecords(0, "pool", 2), done)]), GUARD_MS, "late join");
    all.forEach((got, r) => assertAllRecords(got, 0, "pool", `replica ${r}`));
  });

  test("the caller's signal stops allGather: while the server waits for a peer, and while retrying a peer that is down", async () => {
    const peers = workers.map((w) => w.address);
    // Replica 1 and 2 are known but never gather: replica 0's pulls wait on their servers.
    exchange(1, peers, newDir(), workers[1]!.exchanges, { jobId: "job-abort" });
    exchange(2, peers, newDir(), workers[2]!.exchanges, { jobId: "job-abort" });
    const e0 = exchange(0, peers, newDir(), workers[0]!.exchanges, { jobId: "job-abort" });
    const published = workers[0]!.exchanges.nextChange(new AbortController().signal);
    const stop = new AbortController();
    const gathering = e0.allGather(0, "pool", ownRecords(0, "pool", 0), stop.signal);
    await withTimeout(published, GUARD_MS, "published");
    const reason = new Error("the shard was cancelled");
    stop.abort(reason);
    await withTimeout(assert.rejects(gathering, (e) => e === reason), GUARD_MS, "abort while waiting");

    const log = new Logs();
    const lonely = exchange(0, [peers[0]!, "127.0.0.1:1", "127.0.0.1:1"], newDir(), workers[0]!.exchanges, { jobId: "job-abort-2", logs: log });
    const stop2 = new AbortController();
    const g2 = lonely.allGather(0, "stats", ownRecords(0, "stats", 0), stop2.signal);
    await withTimeout(log.waitFor(/retrying/), GUARD_MS, "retry logged");
    stop2.abort();
    await withTimeout(assert.rejects(g2, (e) => (e as Error).name === "AbortError"), GUARD_MS, "abort while retrying");

    // Aborted while it writes its own file, before it listens: the abort still stops the pulls.
    const early = exchange(0, [peers[0]!, "127.0.0.1:1", "127.0.0.1:1"], newDir(), workers[0]!.exchanges, { jobId: "job-abort-3" });
    const stop3 = new AbortController();
    const g3 = early.allGather(0, "stats", ownRecords(0, "stats", 0), stop3.signal);
    stop3.abort();
    await withTimeout(assert.rejects(g3, (e) => (e as Error).name === "AbortError"), GUARD_MS, "abort before listening");
  });

  test("a peer whose server stopped after publishing: the others read its file, also when they were retrying it", async () => {
    const dir = newDir(); // shared by all, as in a cluster
    const peers = workers.map((w) => w.address);
    const ex = workers.map((w, r) => exchange(r, peers, dir, w.exchanges, { jobId: "job-gone" }));
    // Replica 2 publishes block 0 and waits for the others; its worker goes away meanwhile.
    const stop = new AbortController();
    const waiting = ex[2]!.allGather(0, "stats", ownRecords(0, "stats", 2), stop.signal);
    await withTimeout(waitForFile(exchangePath(dir, 0, "stats", 2)), GUARD_MS, "replica 2's file");
    stop.abort();
    await assert.rejects(waiting);
    await workers[2]!.close();
    const got = await withTimeout(Promise.all([0, 1].map((r) => ex[r]!.allGather(0, "stats", ownRecords(0, "stats", r), done))), GUARD_MS, "block 0");
    got.forEach((g, r) => assertAllRecords(g, 0, "stats", `replica ${r}`));

    // Block 1: the others start while replica 2's worker is down and retry it; replica 2 reruns
    // where nobody can reach it, and its file is what they find.
    const log = new Logs();
    const retrying = [0, 1].map((r) => exchange(r, peers, dir, workers[r]!.exchanges, { jobId: "job-gone", logs: log }));
    const gathering = retrying.map((e, r) => e.allGather(1, "stats", ownRecords(1, "stats", r), done));
    await withTimeout(log.waitFor(/replica 2: pulling from .* failed .*retrying/), GUARD_MS, "retry logged");
    const rerun = exchange(2, peers, dir, new ExchangeRegistry(), { jobId: "job-gone" });
    const all = await withTimeout(Promise.all([...gathering, rerun.allGather(1, "stats", ownRecords(1, "stats", 2), done)]), GUARD_MS, "block 1");
    all.forEach((g, r) => assertAllRecords(g, 1, "stats", `replica ${r}`));
  });

  test("a peer moved to a new address (setPeer): the others pull from there at once", async () => {
    const old = workers[2]!.address; // closed by the previous test
    const moved = await startWorker({ host: "127.0.0.1", port: 0, id: "x2b", threads: 1, log: () => {} });
    workers[2] = moved;
    assert.notEqual(moved.address, old);
    const peers = [workers[0]!.address, workers[1]!.address, old];
    const log = new Logs();
    // A minute of backoff and of file checks: only setPeer can get them going again in time.
    const slow = { logs: log, backoffMs: { initial: 60_000, max: 60_000 }, fileCheckMs: 60_000, jobId: "job-moved" };
    const ex = [0, 1].map((r) => exchange(r, peers, newDir(), workers[r]!.exchanges, slow));
    const gathering = ex.map((e, r) => e.allGather(2, "pool", ownRecords(2, "pool", r), done));
    await withTimeout(log.waitFor(/replica 2: pulling from .* failed/), GUARD_MS, "retry logged");
    const replica2 = exchange(2, [...peers.slice(0, 2), moved.address], newDir(), moved.exchanges, { jobId: "job-moved" });
    for (const e of ex) e.setPeer(2, moved.address);
    const all = await withTimeout(Promise.all([...gathering, replica2.allGather(2, "pool", ownRecords(2, "pool", 2), done)]), GUARD_MS, "after the move");
    all.forEach((g, r) => assertAllRecords(g, 2, "pool", `replica ${r}`));
  });

  test("a peer's file with the wrong samples, or damaged, is an ExchangeError naming the file", async () => {
    const dir = newDir();
    const peers = workers.map((w) => w.address);
    const e0 = exchange(0, peers, dir, workers[0]!.exchanges, { jobId: "job-bad" });
    // Replica 2 owns [7, 10); this file holds [6, 10), as a run planned for other replicas would leave.
    const wrong = exchangePath(dir, 0, "pool", 2);
    await writeExchangeFile(wrong, { first: 6, records: [6, 7, 8, 9].map((j) => recordOf(0, "pool", j)) });
    await writeExchangeFile(exchangePath(dir, 0, "pool", 1), { first: 4, records: [4, 5, 6].map((j) => recordOf(0, "pool", j)) });
    await withTimeout(assert.rejects(e0.allGather(0, "pool", ownRecords(0, "pool", 0), done),
      (e) => e instanceof ExchangeError && e.message.includes(wrong) && /\[6, 10\).*\[7, 10\)/.test(e.message)), GUARD_MS, "wrong range");

    const damaged = exchangePath(dir, 0, "stats", 1);
    const good = encodeExchangeFile({ first: 4, records: [4, 5, 6].map((j) => recordOf(0, "stats", j)) });
    await writeExchangeFile(exchangePath(dir, 0, "stats", 2), { first: 7, records: [7, 8, 9].map((j) => recordOf(0, "stats", j)) });
    await writeFile(damaged, good.subarray(0, good.length - 9));
    await withTimeout(assert.rejects(e0.allGather(0, "stats", ownRecords(0, "stats", 0), done),
      (e) => e instanceof ExchangeError && e.message.includes(damaged) && /checksum/.test(e.message)), GUARD_MS, "damaged");
    // Vector counts must agree across replicas.
    await writeExchangeFile(exchangePath(dir, 1, "stats", 1), { first: 4, records: [4, 5, 6].map((j) => recordOf(1, "stats", j).slice(1)) });
    await writeExchangeFile(exchangePath(dir, 1, "stats", 2), { first: 7, records: [7, 8, 9].map((j) => recordOf(1, "stats", j)) });
    await withTimeout(assert.rejects(e0.allGather(1, "stats", ownRecords(1, "stats", 0), done),
      (e) => e instanceof ExchangeError && /replica 1/.test(e.message) && /sample 4 has 2 vectors; the other samples have 3/.test(e.message)), GUARD_MS, "vector counts");
  });

  test("PullExchange: NOT_FOUND for a job unknown here, INVALID_ARGUMENT naming topic; old blocks are served from the work dir", async () => {
    const client = dataClient(workers[0]!.address);
    try {
      const pull = async (req: { jobId: string; block: number; topic: string; replica: number }) => {
        const out = [];
        for await (const m of client.pullExchange(req, { deadlineMs: 10_000 })) out.push(m);
        return out;
      };
      await assert.rejects(pull({ jobId: "nobody", block: 0, topic: "pool", replica: 0 }), (e) => (e as grpc.ServiceError).code === grpc.status.NOT_FOUND && /nobody/.test((e as grpc.ServiceError).details));
      await assert.rejects(pull({ jobId: "job-x", block: 0, topic: "../x", replica: 0 }), (e) => (e as grpc.ServiceError).code === grpc.status.INVALID_ARGUMENT && /topic/.test((e as grpc.ServiceError).details));

      // A registry keeping 2 blocks per replica: block 0 leaves memory when block 2 is published, and is read from its file.
      const registry = new ExchangeRegistry(2);
      const dir = newDir();
      const solo = new GrpcReplicaExchange({
        jobId: "job-mem", samples: 2, slice: { replica: 0, replicas: 1 }, peers: [""], workDir: dir, registry,
        credentials: grpc.credentials.createInsecure(), channelOptions: {},
      });
      assert.equal(solo.slice.replicas, 1);
      for (let b = 0; b < 3; b++) {
        const data = { first: 0, records: [recordOf(b, "pool", 0), recordOf(b, "pool", 1)] };
        await writeExchangeFile(exchangePath(dir, b, "pool", 0), data);
        registry.publish("job-mem", b, "pool", 0, data);
      }
      assert.equal(registry.find("job-mem", 0, "pool", 0), undefined);
      assert.ok(registry.find("job-mem", 1, "pool", 0) && registry.find("job-mem", 2, "pool", 0));
      workers[0]!.exchanges.openJob("job-mem", dir);
      const fromFile = await pull({ jobId: "job-mem", block: 0, topic: "pool", replica: 0 });
      const a = new RecordAssembler("test", 0, 2);
      for (const m of fromFile) a.push(m);
      assert.ok(bytes(a.finish().records[1]![0]!).equals(bytes(recordOf(0, "pool", 1)[0]!)));
      workers[0]!.exchanges.forgetJob("job-mem");
      await assert.rejects(pull({ jobId: "job-mem", block: 0, topic: "pool", replica: 0 }), (e) => (e as grpc.ServiceError).code === grpc.status.NOT_FOUND);
    } finally {
      client.close();
    }
  });
});

describe("formats", () => {
  test("an exchange file round-trips bit for bit; wrong sample order, trailing bytes and damage are refused", () => {
    const data = { first: 7, records: [7, 8, 9].map((j) => recordOf(3, j === 8 ? "pool" : "stats", j)) };
    const buf = encodeExchangeFile(data);
    const back = decodeExchangeFile(buf, "f.bin");
    assert.equal(back.first, 7);
    back.records.forEach((r, i) => r.forEach((v, k) => assert.ok(bytes(v).equals(bytes(data.records[i]![k]!)))));
    const damaged = Buffer.from(buf);
    damaged[40] = damaged[40]! ^ 1;
    assert.throws(() => decodeExchangeFile(damaged, "f.bin"), (e) => e instanceof ExchangeError && /f\.bin.*checksum/.test(e.message));
    const reordered = Buffer.from(buf);
    reordered.writeUInt32LE(99, 16); // the first record's sample, with a checksum that fits
    reordered.writeUInt32LE(crc32(reordered.subarray(0, reordered.length - 4)), reordered.length - 4);
    assert.throws(() => decodeExchangeFile(reordered, "f.bin"), /record 0 is sample 99, expected 7/);
    const trailing = Buffer.concat([buf.subarray(0, buf.length - 4), Buffer.alloc(8)]);
    trailing.writeUInt32LE(crc32(trailing.subarray(0, trailing.length - 4)), trailing.length - 4);
    assert.throws(() => decodeExchangeFile(trailing, "f.bin"), /4 bytes after the last record/);
    assert.throws(() => decodeExchangeFile(Buffer.from("not an exchange file at all"), "f.bin"), /ATVPXCH1/);
    assert.throws(() => decodeExchangeFile(buf.subarray(0, 12), "f.bin"), ExchangeError);
  });

  test("a record larger than a message spans several, split between vectors, and comes back whole", () => {
    const big: SampleRecord = [new Float64Array(100_000), new Float64Array(100_000), new Float64Array(3), new Float64Array(0)];
    big.forEach((v, k) => v.forEach((_, i) => (v[i] = k * 1e6 + i)));
    const messages = [...recordMessages(5, big)];
    assert.deepEqual(messages.map((m) => [m.firstVector, m.vectors.length]), [[0, 1], [1, 3]]);
    assert.ok(messages.every((m) => m.sample === 5 && m.vectorsInRecord === 4));
    const a = new RecordAssembler("test", 5, 6);
    for (const m of messages) a.push(m);
    const got = a.finish().records[0]!;
    got.forEach((v, k) => assert.ok(bytes(v).equals(bytes(big[k]!))));

    const skip = new RecordAssembler("peer", 5, 7);
    assert.throws(() => skip.push(messages[1]!), /expected vectors from 0/);
    const early = new RecordAssembler("peer", 5, 7);
    for (const m of messages) early.push(m);
    assert.throws(() => early.finish(), (e) => e instanceof ExchangeError && /ended at sample 6.*\[5, 7\)/.test(e.message));
    assert.throws(() => new RecordAssembler("peer", 4, 7).push(messages[0]!), /expected sample 4/);
  });

  test("a vector larger than a message (a per-sample Hessian) travels in pieces and comes back whole", () => {
    // 300,000 float64 = 2,400,000 bytes: pieces of 1 MiB, 1 MiB and the 302,848 bytes left.
    const huge = Float64Array.from({ length: 300_000 }, (_, i) => Math.sin(i) * 1e-300);
    const record: SampleRecord = [new Float64Array([1, 2]), huge, new Float64Array([3])];
    const messages = [...recordMessages(2, record)];
    assert.deepEqual(messages.map((m) => [m.firstVector, m.vectors.length, Number(m.vectorBytes), Number(m.vectorOffset), m.vectors[0]!.byteLength]),
      [[0, 1, 0, 0, 16], [1, 1, 2_400_000, 0, 1 << 20], [1, 1, 2_400_000, 1 << 20, 1 << 20], [1, 1, 2_400_000, 2 << 20, 2_400_000 - (2 << 20)], [2, 1, 0, 0, 8]]);
    const a = new RecordAssembler("test", 2, 3);
    for (const m of messages) a.push(m);
    const got = a.finish().records[0]!;
    got.forEach((v, k) => assert.ok(bytes(v).equals(bytes(record[k]!)), `vector ${k}`));

    // A piece out of place (the third before the second) names where it was expected.
    const swapped = new RecordAssembler("peer", 2, 3);
    swapped.push(messages[0]!);
    swapped.push(messages[1]!);
    assert.throws(() => swapped.push(messages[3]!), (e) => e instanceof ExchangeError && /expected the piece of vector 1 at byte 1048576 of 2400000, got 1 vector\(s\) at byte 2097152/.test(e.message));
    // A stream that ends inside a vector is incomplete.
    const cut = new RecordAssembler("peer", 2, 3);
    for (const m of messages.slice(0, 3)) cut.push(m);
    assert.throws(() => cut.finish(), (e) => e instanceof ExchangeError && /inside its record/.test(e.message));
  });

  test("a replica rerun finds its own file and gathers from it: everybody keeps the same bits; a bad own file is written again", async () => {
    const dir = newDir();
    for (const r of [1, 2]) {
      const { first, end } = replicaSamples(N, R, r);
      await writeExchangeFile(exchangePath(dir, 0, "pool", r), { first, records: Array.from({ length: end - first }, (_, i) => recordOf(0, "pool", first + i)) });
    }
    const unreachable = ["127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1"];
    const first = await exchange(0, unreachable, dir, new ExchangeRegistry(), { jobId: "job-rerun" }).allGather(0, "pool", ownRecords(0, "pool", 0), done);
    assertAllRecords(first, 0, "pool", "first run");
    // The rerun computes other values (say, nondeterminism somewhere): the file wins.
    const rerun = await exchange(0, unreachable, dir, new ExchangeRegistry(), { jobId: "job-rerun" }).allGather(0, "pool", ownRecords(1, "pool", 0), done);
    assertAllRecords(rerun, 0, "pool", "rerun");

    // A file of replica 0 holding other samples (a plan with other replicas) is replaced.
    await writeExchangeFile(exchangePath(dir, 1, "pool", 0), { first: 0, records: [recordOf(9, "pool", 0)] });
    for (const r of [1, 2]) {
      const { first: f, end } = replicaSamples(N, R, r);
      await writeExchangeFile(exchangePath(dir, 1, "pool", r), { first: f, records: Array.from({ length: end - f }, (_, i) => recordOf(1, "pool", f + i)) });
    }
    const log = new Logs();
    const fixed = await exchange(0, unreachable, dir, new ExchangeRegistry(), { jobId: "job-rerun", logs: log }).allGather(1, "pool", ownRecords(1, "pool", 0), done);
    assertAllRecords(fixed, 1, "pool", "after a bad own file");
    assert.ok(log.lines.some((l) => /holds samples \[0, 1\).*writing it again/.test(l)), log.lines.join("\n"));
  });

  test("allGather refuses records that are not exactly this replica's samples, and topics that cannot name a file", async () => {
    const dir = newDir();
    const e = exchange(1, ["a:1", "b:1", "c:1"], dir, new ExchangeRegistry(), { jobId: "job-own" });
    const own = ownRecords(0, "pool", 1);
    own.delete(5);
    await assert.rejects(e.allGather(0, "pool", own), (err) => err instanceof InvalidArgumentError && /sample 5/.test(err.message));
    await assert.rejects(e.allGather(0, "a/b", ownRecords(0, "pool", 1), done), (err) => err instanceof InvalidArgumentError && err.subject === "topic");
    assert.throws(() => exchange(1, ["a:1", "b:1"], dir, new ExchangeRegistry()), (err) => err instanceof InvalidArgumentError && err.subject === "peers");
    assert.equal(existsSync(join(dir, "exchange")), false, "nothing written");
  });
});

/** Waits (bounded) for a file to appear. */
async function waitForFile(path: string): Promise<void> {
  for (let i = 0; i < 1500 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 20));
  await readFile(path); // fails if it never came
}
