// The cluster on a multimodal-RoPE decoder: a generated Qwen2.5-VL-style genai folder, a
// calibration set built by `atvp calib` ([3, T] position ids), pruned in one process and by a
// two-worker cluster: the same bytes.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateVlmFolder } from "../../services/core/src/gen/vlm/vlmFolder.js";
import { buildCalibration } from "../../services/core/src/calib/build/buildCalib.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { tempDir } from "../support/fixtures.js";
import { startLocalCluster, waitForJob } from "../support/cluster.js";

const tmp = tempDir("mrope-cluster");
let nats: NatsServerHandle | undefined;
let decoder: string;
let calib: string;

before(async () => {
  const folder = generateVlmFolder({ layout: "genai-qwen2_5_vl", outDir: join(tmp.path, "qwen"), layers: 4 });
  decoder = join(folder.dir, folder.decoder);
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
