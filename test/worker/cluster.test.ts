// The worker's contract with the coordinator, end to end over real gRPC on loopback: any number
// of workers, sequential and dense propagation, gives an output byte-identical to `atvp prune`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import type { PruneReport } from "../../services/core/src/pipeline/report.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { MiniCoordinator, split, withTimeout } from "./harness.js";

const tmp = tempDir("worker-cluster");
let model: { model: string; calib: string };
let workers: WorkerHandle[] = [];
const quiet = () => {};

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 4, hidden: 64, samples: 6, seqLen: 40, imageTokens: 20, seed: 11 });
  model = { model: g.modelPath, calib: g.calibPath };
  workers = await Promise.all([0, 1, 2].map((i) => startWorker({ host: "127.0.0.1", port: 0, id: `w${i}`, threads: 1, log: quiet })));
});

after(async () => {
  await Promise.all(workers.map((w) => w.close()));
  tmp.cleanup();
});

const references = new Map<string, { data: Buffer; report: PruneReport }>();

async function reference(name: string, spec: Omit<PruneSpec, "model" | "out">) {
  let r = references.get(name);
  if (!r) {
    const out = join(tmp.path, `ref-${name}`);
    const report = await pruneModel({ ...model, out, threads: 1, ...spec } as PruneSpec);
    r = { data: readFileSync(join(out, "model.onnx.data")), report };
    references.set(name, r);
  }
  return r;
}

async function cluster(name: string, spec: Omit<PruneSpec, "model" | "out">, k: number) {
  const out = join(tmp.path, `out-${name}-${k}`);
  const c = await MiniCoordinator.start(`job-${name}-${k}`, { ...model, out, ...spec } as PruneSpec, join(tmp.path, `work-${name}-${k}`));
  try {
    const calls = await withTimeout(c.runAll(workers.slice(0, k).map((w) => w.address), split(c.numBlocks, k)), 30_000, `${name} on ${k} workers`);
    const data = await c.finish();
    return { calls, data, out };
  } finally {
    await c.close();
  }
}

async function received(): Promise<number> {
  let total = 0;
  for (const w of workers) {
    for (const v of (await w.metrics.activationBytes.get()).values) if (v.labels.direction === "received") total += v.value;
  }
  return total;
}

for (const propagation of ["sequential", "dense"] as const) {
  describe(`ATV, ${propagation} propagation`, () => {
    const spec = { method: "atv", sparsity: 0.5, propagation } as const;
    for (const k of [1, 2, 3]) {
      test(`${k} worker(s): model.onnx.data byte-identical to atvp prune`, async () => {
        const ref = await reference(`atv-${propagation}`, spec);
        const receivedBefore = await received();
        const { calls, data, out } = await cluster(`atv-${propagation}`, spec, k);
        // Shard edges went worker to worker over PullStates (not through the shared files).
        if (k > 1) assert.ok((await received()) > receivedBefore, "no states were pulled over the data plane");
        assert.equal(data.length, ref.data.length);
        assert.ok(data.equals(ref.data), "pruned weights differ from the single-process pruner");
        assert.ok(readFileSync(join(out, "model.onnx")).equals(readFileSync(join(tmp.path, `ref-atv-${propagation}`, "model.onnx"))));
        // Every block reported once, by the worker of its shard, with the same ATV choices.
        const finished = calls.flatMap((c) => c.events.filter((e) => e.progress.case === "blockFinished").map((e) => e.progress.value as { block: number; k: number[]; cosDistAvg?: number }));
        assert.deepEqual(finished.map((f) => f.block), [0, 1, 2, 3]);
        for (const f of finished) {
          const b = ref.report.blocks[f.block]!;
          assert.deepEqual(f.k, b.k);
          assert.equal(f.cosDistAvg, b.cosDistAvg);
        }
        for (const c of calls) assert.equal(c.events.at(-1)?.progress.case, "done");
      });
    }
  });
}

test("Wanda and magnitude on 2 workers match atvp prune too", async () => {
  for (const spec of [{ method: "wanda", sparsity: 0.5 }, { method: "magnitude", sparsity: 0.3 }, { method: "wanda", pattern: "2:4", propagation: "dense" }] as const) {
    const name = `${spec.method}-${"pattern" in spec ? "24" : "u"}`;
    const ref = await reference(name, spec);
    const { data } = await cluster(name, spec, 2);
    assert.ok(data.equals(ref.data), `${name}: pruned weights differ`);
  }
});
