// The work-dir format: states files round-trip bit for bit (from any sample on), only complete
// files ever carry the final name, damaged ones are refused with the path; block records are
// written atomically. And the worker's command-line flags.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, truncateSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { SampleState } from "../../services/core/src/pipeline/blockEngine.js";
import { WorkDir } from "../../services/worker/src/checkpoint/checkpoints.js";
import { CheckpointError } from "../../services/worker/src/errors.js";
import { StateFileReader, StateFileWriter, readStateFile, writeStateFile } from "../../services/worker/src/checkpoint/stateFile.js";
import { parseWorkerArgs } from "../../services/worker/src/workerArgs.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("worker-ckpt");
after(() => tmp.cleanup());

function sample(j: number): SampleState {
  const s: SampleState = new Map();
  s.set("h", { type: "float32", dims: [1, 3 + j, 5], data: Float32Array.from({ length: 15 + 5 * j }, (_, i) => (i - 7) / (j + 1)) });
  s.set("d", { type: "float16", dims: [1, 3], data: Uint16Array.from([j, 0x7c00, 0x8000]) });
  s.set("ids", { type: "int64", dims: [1, 1], data: BigInt64Array.from([BigInt(-j)]) });
  return s;
}

function same(a: SampleState, b: SampleState): boolean {
  if ([...a.keys()].join() !== [...b.keys()].join()) return false;
  return [...a].every(([k, t]) => {
    const u = b.get(k)!;
    return u.type === t.type && u.dims.join() === t.dims.join() && Buffer.from(u.data.buffer, u.data.byteOffset, u.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  });
}

test("states files round-trip bit for bit and can be read from any sample", async () => {
  const wd = new WorkDir(join(tmp.path, "w"));
  await wd.prepare();
  const states = [0, 1, 2, 3].map(sample);
  await writeStateFile(wd.statesPath(2), states);
  assert.ok((await readStateFile(wd.statesPath(2), 4)).every((s, j) => same(s, states[j]!)));
  const r = await StateFileReader.open(wd.statesPath(2));
  const tail: Array<[number, SampleState]> = [];
  for await (const x of r.samples(2)) tail.push(x);
  await r.close();
  assert.deepEqual(tail.map(([j]) => j), [2, 3]);
  assert.ok(same(tail[1]![1], states[3]!));
  await assert.rejects(readStateFile(wd.statesPath(2), 5), /holds 4 samples; the job has 5/);
  // Only the final file is left: no temp files.
  assert.deepEqual(readdirSync(join(wd.root, "states")), ["input-2.bin"]);
});

test("an uncommitted writer leaves no file under the final name; damaged files are refused", async () => {
  const wd = new WorkDir(join(tmp.path, "w2"));
  await wd.prepare();
  const w = await StateFileWriter.create(wd.statesPath(1), 3);
  await w.append(sample(0));
  await assert.rejects(w.commit(), /has 1 of 3 samples/);
  await w.abort();
  assert.equal(await wd.hasStates(1), false);
  assert.deepEqual(readdirSync(join(wd.root, "states")), []);

  await writeStateFile(wd.statesPath(1), [sample(0), sample(1)]);
  truncateSync(wd.statesPath(1), statSync(wd.statesPath(1)).size - 1);
  await assert.rejects(readStateFile(wd.statesPath(1)), (e: unknown) => e instanceof CheckpointError && /input-1\.bin/.test((e as Error).message) && /truncated/.test((e as Error).message));
  writeFileSync(wd.statesPath(3), "not a states file at all, but long enough");
  await assert.rejects(readStateFile(wd.statesPath(3)), /bad magic/);
});

test("block records: done iff the json exists, read back as written", async () => {
  const wd = new WorkDir(join(tmp.path, "w3"));
  await wd.prepare();
  assert.equal(await wd.isDone(4), false);
  const record = { report: { index: 4, label: "layers.4", cosDistAvg: 0.25, k: [1, 2], nText: [3, 3], nVisual: [4, 4], seconds: 0.1, tokensPerSecond: 10 }, layers: [] };
  await wd.writeBlock(4, record);
  assert.equal(await wd.isDone(4), true);
  assert.deepEqual(await wd.readBlock(4), record);
  assert.deepEqual(readdirSync(join(wd.root, "blocks")), ["4.json"]);
  writeFileSync(wd.blockPath(5), JSON.stringify(record));
  await assert.rejects(wd.readBlock(5), /is not the record of block 5/);
  assert.ok(existsSync(wd.blockPath(5)));
});

test("worker flags", () => {
  assert.deepEqual(
    parseWorkerArgs(["--listen", "127.0.0.1:7070", "--id", "w1", "--threads", "4", "--device=auto", "--memory", "1000", "--metrics-port", "0",
      "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem", "--tls-require-client-cert"]),
    { host: "127.0.0.1", port: 7070, id: "w1", threads: 4, device: "auto", memoryBytes: 1000, metricsPort: 0, advertise: undefined,
      tls: { cert: "c.pem", key: "k.pem", ca: "ca.pem", requireClientCert: true, serverName: undefined }, insecure: false,
      token: undefined, allowedRoots: [process.cwd()], workRoots: [], clientNames: undefined },
  );
  assert.deepEqual(parseWorkerArgs(["--listen", "[::1]:0", "--insecure"]).host, "::1");
  assert.deepEqual(parseWorkerArgs(["--listen", ":9000", "--insecure"]).host, "0.0.0.0");
  assert.throws(() => parseWorkerArgs(["--threads", "0"]), /--threads: must be an integer >= 1/);
  assert.throws(() => parseWorkerArgs(["--device", "tpu"]), /--device/);
  assert.throws(() => parseWorkerArgs(["--listen", "nohost"]), /expected host:port/);
  assert.throws(() => parseWorkerArgs(["--bogus"]), /unknown flag/);
  assert.throws(() => parseWorkerArgs(["--id"]), /needs a value/);
});
