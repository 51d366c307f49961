// A real Prometheus scrapes a coordinator and two workers (in this process, each with its own
// /metrics port) while a job runs; its HTTP API must then give the numbers report.json implies.
// The Grafana dashboard's queries are checked here too: they parse (promtool) and each returns
// data from these real scrapes, naming only metrics the services export.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { startNatsServer, type NatsServerHandle } from "../../services/coordinator/src/state/natsServer.js";
import { startCoordinator, type CoordinatorHandle } from "../../services/coordinator/src/coordinator.js";
import { startWorker, type WorkerHandle } from "../../services/worker/src/worker.js";
import type { PruneReport } from "../../services/core/src/pipeline/report.js";
import { jobClient, waitForJob, type JobClient } from "../support/cluster.js";
import { REPO, tempDir } from "../support/fixtures.js";
import { missingBinary, PrometheusServer, PROMETHEUS, PROMTOOL } from "../support/prometheusServer.js";

const missing = missingBinary(PROMETHEUS) ?? missingBinary(PROMTOOL);
const tmp = tempDir("prometheus");
let nats: NatsServerHandle;
let workers: WorkerHandle[] = [];
let coordinator: CoordinatorHandle;
let client: JobClient;
let prom: PrometheusServer;
let report: PruneReport;
let metricsText = "";
/** when Prometheus had scraped the job's end from every target */
let settled = 0;

// The coordinator's buckets (coordinatorMetrics.ts).
const COORDINATOR_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900];

/** What Prometheus's histogram_quantile gives for these observations in these buckets. */
function histogramQuantile(q: number, observations: number[], buckets: number[]): number {
  const counts = [...buckets.map((le) => observations.filter((o) => o <= le).length), observations.length];
  const uppers = [...buckets, Infinity];
  const rank = q * observations.length;
  const b = counts.findIndex((c) => c >= rank);
  if (b === uppers.length - 1) return uppers[b - 1]!;
  const start = b === 0 ? 0 : uppers[b - 1]!;
  const below = b === 0 ? 0 : counts[b - 1]!;
  return start + (uppers[b]! - start) * ((rank - below) / (counts[b]! - below));
}

before(async () => {
  if (missing) return;
  const g = await generateModel({ outDir: join(tmp.path, "model"), layers: 6, hidden: 64, samples: 12, seqLen: 48, imageTokens: 20, seed: 5 });
  nats = await startNatsServer({ dir: join(tmp.path, "nats") });
  for (let i = 0; i < 2; i++) workers.push(await startWorker({ id: `w${i}`, threads: 1, metricsPort: 0, log: () => {} }));
  coordinator = await startCoordinator({
    nats: nats.url, workers: workers.map((w) => w.address), workRoot: join(tmp.path, "jobs"), allowedRoots: [tmp.path], metricsPort: 0, log: () => {},
  });
  await coordinator.pool.waitForReady(2, 10_000);
  client = jobClient(coordinator.address);
  prom = await PrometheusServer.start(join(tmp.path, "prom"), {
    coordinator: [`127.0.0.1:${coordinator.metricsPort}`],
    "atvp-workers": workers.map((w) => `127.0.0.1:${w.metricsPort}`),
  });
  // Zeros scraped before the job: rate() needs a sample on each side of the increase.
  await prom.waitFor("min(count_over_time(up[1m])) >= 3 and on() count(up == 1) == 3", (r) => r.length === 1);

  const out = join(tmp.path, "out");
  // One replica per stage: each worker prunes (and counts) a shard of the chain.
  const { job } = await client.submitJob({ spec: { model: g.modelPath, calib: g.calibPath, out, method: "atv", sparsity: 0.5, alpha: 4, replicas: 1 } });
  const result = await waitForJob(client, job!.id);
  assert.equal(result.state, JobState.SUCCEEDED);
  report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as PruneReport;
  const blocks = report.blocks.length;
  await prom.waitFor(`atvp_jobs{job="coordinator",state="SUCCEEDED"} == 1 and on() atvp_blocks_pruned_total{job="coordinator"} == ${blocks}`, (r) => r.length === 1);
  await prom.waitFor(`sum(atvp_blocks_pruned_total{job="atvp-workers"}) == ${blocks}`, (r) => r.length === 1);
  // A whole second, already past: Prometheus evaluates at millisecond resolution, and the rate
  // check below recomputes rate() from the same window's samples.
  settled = Math.ceil(Date.now() / 1000);
  await new Promise((r) => setTimeout(r, settled * 1000 - Date.now() + 50));
  for (const port of [coordinator.metricsPort, workers[0]!.metricsPort]) metricsText += await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
});

after(async () => {
  client?.close();
  await prom?.stop();
  await coordinator?.close();
  for (const w of workers) await w.close();
  await nats?.stop();
  tmp.cleanup();
});

test("rate(atvp_blocks_pruned_total[1m]) is positive and consistent with the blocks in report.json", { skip: missing }, async () => {
  const blocks = report.blocks.length;
  assert.equal(blocks, 6);
  assert.equal(await prom.scalar(`atvp_blocks_pruned_total{job="coordinator"}`, settled), blocks);
  const rate = await prom.scalar(`rate(atvp_blocks_pruned_total{job="coordinator"}[1m])`, settled);
  assert.ok(rate > 0, `rate ${rate}`);
  // rate() is the counter's increase over the samples in the window, extrapolated to the window's
  // edges by Prometheus's documented rule: recompute it from the raw samples Prometheus stored.
  const samples = await prom.rangeSamples(`atvp_blocks_pruned_total{job="coordinator"}[1m]`, settled);
  const expected = extrapolatedRate(samples, settled - 60, settled);
  assert.ok(Math.abs(rate - expected) <= 1e-6 * rate, `rate ${rate}, from the samples ${expected} (at ${settled}: ${JSON.stringify(samples)})`);
  assert.ok(samples[samples.length - 1]![1] - samples[0]![1] <= blocks, `more than ${blocks} blocks counted in 1m: ${JSON.stringify(samples)}`);
  // increase() is rate() × the window: the same extrapolation, over 5 minutes whose samples
  // cover the whole job (from 0 to every block of report.json).
  const increase = await prom.scalar(`increase(atvp_blocks_pruned_total{job="coordinator"}[5m])`, settled);
  const samples5m = await prom.rangeSamples(`atvp_blocks_pruned_total{job="coordinator"}[5m]`, settled);
  assert.equal(samples5m[0]![1], 0);
  assert.equal(samples5m[samples5m.length - 1]![1], blocks);
  const expectedIncrease = extrapolatedRate(samples5m, settled - 300, settled) * 300;
  assert.ok(Math.abs(increase - expectedIncrease) <= 1e-6 * increase, `increase ${increase}, from the samples ${expectedIncrease}`);
  // Each worker counts its own shard's blocks; together, every block once.
  const perWorker = await prom.query(`rate(atvp_blocks_pruned_total{job="atvp-workers"}[1m])`, settled);
  assert.deepEqual(perWorker.map((s) => s.metric["worker"]).sort(), ["w0", "w1"]);
  for (const s of perWorker) assert.ok(Number(s.value[1]) > 0, `worker ${s.metric["worker"]} rate ${s.value[1]}`);
  // Shard 1 pulled its input states from shard 0's worker.
  assert.ok(await prom.scalar(`sum(atvp_activation_bytes_streamed_total{direction="received"})`, settled) > 0);
  assert.equal(await prom.scalar(`sum(atvp_activation_bytes_streamed_total{direction="received"})`, settled),
    await prom.scalar(`sum(atvp_activation_bytes_streamed_total{direction="served"})`, settled));
  assert.equal(await prom.scalar(`atvp_params_pruned_total{job="coordinator"}`, settled), report.totals.pruned);
  assert.equal(await prom.scalar(`sum(atvp_params_pruned_total{job="atvp-workers"})`, settled), report.totals.pruned);
});

test(`atvp_jobs{state="SUCCEEDED"} is 1 and no job is in another state`, { skip: missing }, async () => {
  assert.equal(await prom.scalar(`atvp_jobs{state="SUCCEEDED"}`, settled), 1);
  assert.equal(await prom.scalar(`sum(atvp_jobs)`, settled), 1);
  assert.equal(await prom.scalar(`atvp_jobs_failed_total`, settled), 0);
  assert.deepEqual(await prom.query(`atvp_job_last_progress_timestamp_seconds`, settled), [], "a finished job has no progress timestamp");
  assert.equal(await prom.scalar(`atvp_workers_ready`, settled), 2);
});

test("histogram_quantile(0.9) of the block durations is the one report.json's block times give", { skip: missing }, async () => {
  const seconds = report.blocks.map((b) => b.seconds);
  const expected = histogramQuantile(0.9, seconds, COORDINATOR_BUCKETS);
  const got = await prom.scalar(`histogram_quantile(0.9, sum by (le) (rate(atvp_block_duration_seconds_bucket{job="coordinator"}[5m])))`, settled);
  assert.ok(Math.abs(got - expected) <= 1e-6 * Math.max(1, expected), `p90 ${got}, expected ${expected} from ${JSON.stringify(seconds)}`);
  assert.equal(await prom.scalar(`atvp_block_duration_seconds_count{job="coordinator"}`, settled), seconds.length);
  // Over every target (the workers observe the same blocks in finer buckets) the p90 still lies
  // within the bucket of the coordinator's answer.
  const all = await prom.scalar(`histogram_quantile(0.9, sum by (le) (rate(atvp_block_duration_seconds_bucket[1m])))`, settled);
  const upper = COORDINATOR_BUCKETS.find((le) => le >= expected)!;
  const lower = [0, ...COORDINATOR_BUCKETS].filter((le) => le < upper).pop()!;
  assert.ok(all >= lower && all <= upper, `p90 over all targets ${all}, outside (${lower}, ${upper}]`);
});

test("every query of the Grafana dashboard parses, names exported metrics and returns data", { skip: missing }, async () => {
  const dashboard = JSON.parse(readFileSync(join(REPO, "helm/atv-prune/files/atv-prune-dashboard.json"), "utf8")) as { panels: Array<{ title: string; targets: Array<{ expr: string }> }> };
  const titles = dashboard.panels.map((p) => p.title);
  for (const want of ["Blocks pruned per second", "Parameters pruned per second", "Calibration tokens per second", "Streamed activation bytes per second", "Block duration quantiles", "Jobs by state", "Ready workers", "GPU memory per worker"]) {
    assert.ok(titles.includes(want), `no panel "${want}" in ${titles.join(", ")}`);
  }
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => ({ panel: p.title, expr: t.expr.replaceAll("$__rate_interval", "5m") })));
  // promtool parses each expression as a recording rule.
  const rules = join(tmp.path, "dashboard-rules.yaml");
  writeFileSync(rules, JSON.stringify({ groups: [{ name: "dashboard", rules: exprs.map((e, i) => ({ record: `dashboard:query_${i}`, expr: e.expr })) }] }));
  const check = spawnSync(PROMTOOL, ["check", "rules", rules], { encoding: "utf8" });
  assert.equal(check.status, 0, `promtool check rules: ${check.stdout}${check.stderr}`);
  const exported = new Set([...metricsText.matchAll(/^# TYPE (\S+) (\S+)/gm)].flatMap(([, name, type]) =>
    type === "histogram" ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name!]));
  for (const { panel, expr } of exprs) {
    for (const name of expr.match(/\batvp_[a-z_]+/g) ?? []) assert.ok(exported.has(name), `${panel}: ${name} is not exported by the services`);
    const r = await prom.query(expr, settled);
    assert.ok(r.length > 0, `${panel}: ${expr} returned no data`);
  }
});

test("the alert rules name only metrics the services export", { skip: missing }, () => {
  const rules = readFileSync(join(REPO, "deploy/prometheus/atvp-alerts.yaml"), "utf8");
  const names = new Set(rules.match(/\batvp_[a-z_]+(?=[{[\s)])/g) ?? []);
  assert.ok(names.size >= 6, [...names].join(", "));
  for (const name of names) assert.match(metricsText, new RegExp(`^# TYPE ${name} `, "m"), `${name} is not exported`);
});

/**
 * Prometheus's rate() of a counter without resets (promql/functions.go, extrapolatedRate): the
 * increase between the first and last sample, extended towards each window edge by the gap to it
 * when that gap is under 1.1 average sample intervals (else by half an interval), and towards
 * zero no further than where the counter would have been 0.
 */
function extrapolatedRate(samples: Array<[number, number]>, rangeStart: number, rangeEnd: number): number {
  assert.ok(samples.length >= 2, `rate needs two samples, got ${samples.length}`);
  // Milliseconds, as Prometheus keeps timestamps: float seconds near 1.8e9 lose the last digits.
  const ms = (s: number) => Math.round(s * 1000);
  const [firstT, first] = samples[0]!;
  const [lastT, last] = samples[samples.length - 1]!;
  for (let i = 1; i < samples.length; i++) assert.ok(samples[i]![1] >= samples[i - 1]![1], "the counter reset");
  const increase = last - first;
  const sampled = (ms(lastT) - ms(firstT)) / 1000;
  const average = sampled / (samples.length - 1);
  let toStart = (ms(firstT) - ms(rangeStart)) / 1000;
  const toEnd = (ms(rangeEnd) - ms(lastT)) / 1000;
  if (increase > 0 && first >= 0) toStart = Math.min(toStart, sampled * (first / increase));
  const threshold = average * 1.1;
  let interval = sampled;
  interval += toStart < threshold ? toStart : average / 2;
  interval += toEnd < threshold ? toEnd : average / 2;
  return (increase * (interval / sampled)) / ((ms(rangeEnd) - ms(rangeStart)) / 1000);
}
