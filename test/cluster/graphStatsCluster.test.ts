// --stats graph in the cluster (spec.stats travels in the JobSpec and the JobPlan): 2 workers,
// ATV sequential, Wanda dense and Wanda with OWL's profile phase, write exactly the bytes and block facts of
// `atvp prune --stats graph`. ATV's cosDistAvg differs between host and graph statistics in its
// last bits (the order of float64 sums), so equal facts show the workers computed them in the graph.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { tempDir } from "../support/fixtures.js";
import { startLocalCluster, waitForJob } from "../support/cluster.js";

const tmp = tempDir("graph-stats-cluster");
let model: { model: string; calib: string };
let nats: NatsServerHandle;
let counter = 0;

type Report = { blocks: { cosDistAvg: number | null; k: number[] }[] };
const JOBS: Record<string, Record<string, unknown>> = {
  "atv sequential": { method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential" },
  "wanda dense": { method: "wanda", sparsity: 0.5, propagation: "dense" },
  "wanda owl": { method: "wanda", sparsity: 0.5, sparsityProfile: "owl" },
};
const reference = new Map<string, { data: Buffer; report: Report }>();

function outputOf(out: string): { data: Buffer; report: Report } {
  return { data: readFileSync(join(out, "model.onnx.data")), report: JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as Report };
}

const facts = (r: Report) => r.blocks.map((b) => ({ cosDistAvg: b.cosDistAvg, k: b.k }));

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 4, hidden: 64, samples: 8, seqLen: 40, imageTokens: 16, seed: 5 });
  model = { model: g.modelPath, calib: g.calibPath };
  for (const [name, extra] of Object.entries(JOBS)) {
    const out = join(tmp.path, `ref-${++counter}`);
    await pruneModel({ ...model, out, threads: 1, stats: "graph", ...extra } as never);
    reference.set(name, outputOf(out));
  }
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
});
after(async () => {
  await nats?.stop();
  tmp.cleanup();
});

test("the host statistics give other last bits of ATV's cosDistAvg (so the facts below tell the settings apart)", async () => {
  const out = join(tmp.path, "ref-host");
  await pruneModel({ ...model, out, threads: 1, stats: "host", ...JOBS["atv sequential"] } as never);
  assert.notDeepEqual(facts(outputOf(out).report), facts(reference.get("atv sequential")!.report));
});

for (const name of Object.keys(JOBS)) {
  test(`${name}, --stats graph on 2 workers: bit-identical to atvp prune --stats graph`, async () => {
    const c = await startLocalCluster(nats.url, 2, tmp.path);
    try {
      const out = join(tmp.path, `out-${++counter}`);
      const { job } = await c.client.submitJob({ spec: { ...model, out, stats: "graph", ...JOBS[name] } });
      const result = await waitForJob(c.client, job!.id);
      const final = await c.client.getJob({ id: job!.id });
      assert.equal(result.state, JobState.SUCCEEDED, final.reason);
      assert.equal(final.spec?.stats, "graph");
      assert.equal(final.shards.length, 2);
      const got = outputOf(out);
      const ref = reference.get(name)!;
      assert.ok(got.data.equals(ref.data), "model.onnx.data differs from atvp prune --stats graph");
      assert.deepEqual(facts(got.report), facts(ref.report));
    } finally {
      await c.close();
    }
  });
}
