// JobRunner's resume against what a stopped predecessor may have left: a worker finalized the
// output (model.onnx, model.onnx.data) but report.json was never written. The resumed job must
// keep that output (its done blocks are replayed, not rewritten) and end bit-identical.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { clone, create } from "@bufbuild/protobuf";
import { JobSchema, JobSpecSchema, JobState, type Job, type JobEvent } from "../../services/gen/atvprune/v1/job_pb.js";
import { JobRunner } from "../../services/coordinator/src/jobRunner.js";
import { CoordinatorMetrics } from "../../services/coordinator/src/coordinatorMetrics.js";
import { WorkerPool } from "../../services/coordinator/src/workerPool.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import { tempDir } from "../support/fixtures.js";
import { smallJobWithReference, type SmallJob } from "../support/smallJob.js";

const tmp = tempDir("runner-resume");
let model: SmallJob;
let workers: WorkerHandle[] = [];

before(async () => {
  model = await smallJobWithReference(tmp.path);
  workers = [await startWorker({ threads: 1, log: () => {} }), await startWorker({ threads: 1, log: () => {} })];
});
after(async () => {
  for (const w of workers) await w.close();
  tmp.cleanup();
});

/** In-memory job store and event log: what JobRunner needs of NATS. */
function memoryPorts() {
  const jobs = new Map<string, Job>();
  const events: JobEvent[] = [];
  return {
    jobs,
    store: {
      create: async (job: Job) => { jobs.set(job.id, clone(JobSchema, job)); },
      get: async (id: string) => jobs.get(id),
      update: async (id: string, mutate: (job: Job) => void) => { const j = jobs.get(id)!; mutate(j); return j; },
      list: async () => [...jobs.values()],
    },
    events: { publish: (e: JobEvent) => { events.push(e); }, watch: () => { throw new Error("not used"); } },
  };
}

test("a resumed job keeps the output a worker already finalized and ends bit-identical", async () => {
  const out = join(tmp.path, "out");
  const spec = create(JobSpecSchema, { model: model.model, calib: model.calib, out, method: "atv", sparsity: 0.5, alpha: 4, propagation: "sequential" });
  const ports = memoryPorts();
  await ports.store.create(create(JobSchema, { id: "job-r", spec, state: JobState.PENDING }));
  const pool = new WorkerPool(workers.map((w) => w.address));
  const deps = {
    ...ports, pool, metrics: new CoordinatorMetrics(() => [], () => 0), workRoot: join(tmp.path, "jobs"), log: () => {},
    keepWork: true, // the checkpoints a real failure would keep
  };
  try {
    await new JobRunner(deps, "job-r", spec, false).run();
    assert.equal(ports.jobs.get("job-r")!.state, JobState.SUCCEEDED, ports.jobs.get("job-r")!.reason);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(model.reference));
    // The predecessor stopped after its worker finalized, before report.json.
    rmSync(join(out, "report.json"));
    ports.jobs.get("job-r")!.state = JobState.RUNNING;
    await new JobRunner(deps, "job-r", spec, true).run();
    assert.equal(ports.jobs.get("job-r")!.state, JobState.SUCCEEDED, ports.jobs.get("job-r")!.reason);
    assert.ok(readFileSync(join(out, "model.onnx.data")).equals(model.reference), "the finalized weights are kept");
    assert.ok(existsSync(join(out, "report.json")));
    assert.ok(!existsSync(join(out, "model.onnx.data.partial")));
  } finally {
    pool.close();
  }
});
