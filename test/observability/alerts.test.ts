// The alert rules: promtool accepts them and their unit tests pass (each alert fires when it
// should and not in the look-alike case), and the chart's PrometheusRule carries the same file.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { REPO } from "../support/fixtures.js";
import { readYamlFile } from "../deploy/deployFiles.js";
import { missingBinary, PROMTOOL } from "../support/prometheusServer.js";

const missing = missingBinary(PROMTOOL);
const RULES = join(REPO, "deploy/prometheus/atvp-alerts.yaml");
const ALERTS = ["AtvpJobFailed", "AtvpJobNotProgressing", "AtvpNoReadyWorkers", "AtvpWorkerStalled", "AtvpWorkerLost", "AtvpWorkerDeviceLost"];

test("promtool check rules accepts deploy/prometheus/atvp-alerts.yaml", { skip: missing }, () => {
  const r = spawnSync(PROMTOOL, ["check", "rules", RULES], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, new RegExp(`SUCCESS: ${ALERTS.length} rules found`));
});

test("promtool test rules: every alert has a unit test, and they pass", { skip: missing }, () => {
  const tests = readFileSync(join(REPO, "deploy/prometheus/atvp-alerts.test.yaml"), "utf8");
  for (const a of ALERTS) assert.match(tests, new RegExp(`alertname: ${a}\\n[\\s\\S]*?exp_labels`), `no firing test for ${a}`);
  const r = spawnSync(PROMTOOL, ["test", "rules", join(REPO, "deploy/prometheus/atvp-alerts.test.yaml")], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /SUCCESS/);
});

test("the chart's PrometheusRule ships the same rules file", () => {
  assert.equal(readFileSync(join(REPO, "helm/atv-prune/files/atvp-alerts.yaml"), "utf8"), readFileSync(RULES, "utf8"));
  const template = readFileSync(join(REPO, "helm/atv-prune/templates/prometheusrule.yaml"), "utf8");
  assert.match(template, /kind: PrometheusRule/);
  assert.match(template, /\.Files\.Get "files\/atvp-alerts\.yaml"/);
});

test("the chart's dashboard ConfigMap carries the dashboard file and the Grafana sidecar's label", () => {
  const values = readYamlFile(join(REPO, "helm/atv-prune/values.yaml")) as { metrics: { grafanaDashboard: { enabled: boolean; labels: Record<string, string> } } };
  assert.equal(values.metrics.grafanaDashboard.enabled, false, "optional, off by default");
  assert.deepEqual(values.metrics.grafanaDashboard.labels, { grafana_dashboard: "1" });
  const template = readFileSync(join(REPO, "helm/atv-prune/templates/grafana-dashboard.yaml"), "utf8");
  assert.match(template, /^\{\{- if \.Values\.metrics\.grafanaDashboard\.enabled \}\}/);
  assert.match(template, /kind: ConfigMap/);
  assert.match(template, /with \.Values\.metrics\.grafanaDashboard\.labels \}\}\n\s+\{\{- toYaml \. \| nindent 4 \}\}/);
  assert.match(template, /\.Files\.Get "files\/atv-prune-dashboard\.json"/);
  const dashboard = JSON.parse(readFileSync(join(REPO, "helm/atv-prune/files/atv-prune-dashboard.json"), "utf8")) as { uid: string; panels: unknown[] };
  assert.equal(dashboard.uid, "atv-prune");
  assert.ok(dashboard.panels.length >= 8);
});
