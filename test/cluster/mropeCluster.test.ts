// The cluster on a multimodal-RoPE decoder: a generated Qwen2.5-VL-style genai folder, a
// calibration set built by `atvp calib` ([3, T] position ids), pruned in one process and by a
// two-worker cluster: the same bytes.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateVlmFolder } from "../../services/core/src/gen/vlm/vlmFolder.js";
import { buildCalibration } from "../../services/core/src/calib/build/buildCalib.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { pruneModelFolder } from "../../services/core/src/modelDir/pruneFolder.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { tempDir } from "../support/fixtures.js";
import { startLocalCluster, waitForJob } from "../support/cluster.js";

const tmp = tempDir("mrope-cluster");
let nats: NatsServerHandle | undefined;
let decoder: string;
let folderDir: string;
let calib: string;

before(async () => {
  const folder = generateVlmFolder({ layout: "genai-qwen2_5_vl", outDir: join(tmp.path, "qwen"), layers: 4 });
  decoder = join(folder.dir, folder.decoder);
  folderDir = folder.dir;
  calib = (await buildCalibration({ modelDir: folder.dir, prompts: join(folder.dir, folder.prompts), out: join(tmp.path, "cal") })).calibPath;
  assert.match(readFileSync(calib, "utf8"), /"position_ids":"s0\.pos\.npy"/);
});
after(async () => {
  await nats?.stop();
  tmp.cleanup();
});

test("2 workers, sequential ATV on a multimodal-RoPE decoder: bit-identical to atvp prune", async () => {
  const spec = { model: decoder, calib, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential" };
  const ref = join(tmp.path, "ref");
  await pruneModel({ ...spec, out: ref, threads: 1 } as never);
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
  const c = await startLocalCluster(nats.url, 2, tmp.path);
  const client = c.client;
  try {
    const out = join(tmp.path, "cluster-out");
    const { job } = await client.submitJob({ spec: { ...spec, out } });
    const result = await waitForJob(client, job!.id);
    const final = await client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    assert.equal(final.shards.length, 2);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(readFileSync(join(ref, "model.onnx.data"))));
  } finally {
    await c.close();
  }
});

/** Every file under a folder, by relative path, but report.json (it names the job). */
function files(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const rel = relative(dir, join(e.parentPath, e.name));
    if (rel !== "report.json") out.set(rel, readFileSync(join(e.parentPath, e.name)));
  }
  return out;
}

test("submit --model DIR: 2 workers write the same complete folder as atvp prune --model DIR", async () => {
  const spec = { model: folderDir, calib, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential" };
  const ref = join(tmp.path, "folder-ref");
  await pruneModelFolder({ ...spec, out: ref, threads: 1 } as never);
  nats ??= await startNatsServer({ dir: join(tmp.path, "nats") });
  const c = await startLocalCluster(nats.url, 2, tmp.path);
  try {
    const out = join(tmp.path, "folder-cluster");
    const { job } = await c.client.submitJob({ spec: { ...spec, out } });
    const result = await waitForJob(c.client, job!.id);
    const final = await c.client.getJob({ id: job!.id });
    assert.equal(result.state, JobState.SUCCEEDED, final.reason);
    const want = files(ref);
    const got = files(out);
    assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), "the same files, no staging left");
    for (const [rel, bytes] of want) assert.ok(got.get(rel)!.equals(bytes), `${rel} differs`);
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { spec: { model: string; decoder: string; layout: string } };
    assert.equal(report.spec.decoder, "model.onnx");
    assert.equal(report.spec.layout, "genai");
    // An output folder inside the model folder would copy the folder into itself.
    await assert.rejects(c.client.submitJob({ spec: { ...spec, out: join(folderDir, "pruned") } }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /spec\.out: .* overlaps the model folder/.test(e.details));
  } finally {
    await c.close();
  }
});
