// The chart through helm itself (findHelm: $HELM, the pinned helm from the npm layer package, or
// PATH): lint, render with the defaults, with every optional feature on and with the settings
// those exclude, validate every rendered object (kubernetes-models, or customResources.ts for
// CRD-defined kinds), check that deploy/k8s (and deploy/k8s/prunejobs) is the chart's rendering,
// and that bad values fail.
// Where the pinned helm has no build for the machine (not linux x86-64) and there is no other
// helm, each test is reported as skipped, saying so.
import { strict as assert } from "node:assert";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test, type TestContext } from "node:test";
import {
  CHART_DIR, NAMESPACE, PLAIN_DIR, RELEASE, REPO, asK8sObject, findHelm, flagValues, loadPlainManifests, parseYamlDocuments, podTemplate,
  readYamlFile, unknownFields, withoutHelmBookkeeping, type K8sObject,
} from "./deployFiles.js";
import { validateRendered } from "./customResources.js";

const found = findHelm();
const helm = found.path;

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(helm!, args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`${helm} ${args.join(" ")}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `helm template` as release atvp in namespace atv-prune, with extra values files or --set flags. */
function render(extra: string[] = []): K8sObject[] {
  const r = run(["template", RELEASE, CHART_DIR, "--namespace", NAMESPACE, ...extra]);
  assert.equal(r.status, 0, `helm template ${extra.join(" ")} failed:\n${r.stderr}`);
  return parseYamlDocuments(r.stdout, "helm template").map((o) => asK8sObject(o, "helm template"));
}

function withValuesFile<T>(values: unknown, fn: (path: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), "atvp-helm-"));
  try {
    const path = join(dir, "values.json");
    writeFileSync(path, JSON.stringify(values));
    return fn(path);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Every optional feature at once (JSON is YAML, so helm reads it as a values file).
const ALL_FEATURES = {
  nats: { url: "tls://nats.nats:4222", existingSecret: "nats-auth", credsSecret: "nats-creds" },
  auth: { existingSecret: "atvp-token" },
  tls: {
    enabled: true, secretName: "atvp-tls", requireClientCert: true, workerServerName: "workers.atvp", workerClientNames: ["atvp-atv-prune-coordinator"],
    certManager: { enabled: true, issuerRef: { name: "cluster-ca", kind: "ClusterIssuer" }, dnsNames: ["atvp.example.org"] },
  },
  storage: { existingClaim: "shared-rwx" },
  worker: { autoscaling: { enabled: true, minReplicas: 1, maxReplicas: 8 }, memoryBytes: 17179869184, runtimeClassName: "nvidia", podDisruptionBudget: { minAvailable: "50%" } },
  coordinator: { allowedRoots: ["."], stallTimeoutSeconds: 300, keepWork: true },
  metrics: {
    serviceMonitor: { enabled: true, labels: { release: "kps" } },
    prometheusRule: { enabled: true, labels: { release: "kps" } },
    grafanaDashboard: { enabled: true, annotations: { grafana_folder: "ATV" } },
  },
  pruneJobs: { enabled: true },
  imagePullSecrets: [{ name: "regcred" }],
};

// The settings ALL_FEATURES cannot hold at the same time: a TLS Secret of one's own (no
// cert-manager), a created claim without dynamic provisioning, no ServiceAccount and no RBAC
// from the chart, the PruneJob CRD managed elsewhere, no PodDisruptionBudget, a LoadBalancer,
// and every pass-through (extra args and env, pod labels, scheduling, names).
const ALTERNATIVES = {
  nameOverride: "pruner",
  nats: { credsSecret: "nats-creds", credsKey: "user.creds" },
  auth: { existingSecret: "atvp-token", tokenKey: "secret" },
  tls: { enabled: true, secretName: "own-tls" },
  storage: { storageClassName: "-", keepOnUninstall: false, annotations: { "backup/enabled": "true" }, size: "1Ti", mountPath: "/mnt/shared" },
  serviceAccount: { create: false, name: "existing-sa" },
  rbac: { create: false },
  pruneJobs: { enabled: true, installCRD: false },
  coordinator: {
    image: { tag: "1.2.3", pullPolicy: "Always" }, extraArgs: ["--log-level", "debug"], extraEnv: [{ name: "EXTRA", value: "1" }],
    service: { type: "LoadBalancer", annotations: { "lb/internal": "true" } }, podAnnotations: { note: "c" }, podLabels: { team: "ml" },
    priorityClassName: "high", nodeSelector: { pool: "cpu" }, tolerations: [{ key: "dedicated", operator: "Exists" }],
    affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [{ matchExpressions: [{ key: "pool", operator: "In", values: ["cpu"] }] }] } } },
  },
  worker: {
    replicas: 0, device: "cuda", extraArgs: ["--threads", "8"], extraEnv: [{ name: "EXTRA", value: "1" }], service: { annotations: { note: "w" } },
    podAnnotations: { note: "w" }, podLabels: { team: "ml" }, priorityClassName: "high", nodeSelector: { "nvidia.com/gpu.present": "true" },
    podDisruptionBudget: { enabled: false },
  },
  metrics: { grafanaDashboard: { enabled: true, labels: { grafana_dashboard: "1", team: "ml" } } },
};

// Skipped only where the pinned helm cannot run; where it should, its absence is a failure.
function needsHelm(t: TestContext): boolean {
  if (found.path !== undefined) return true;
  if (!found.unsupported) assert.fail(found.reason);
  t.skip(found.reason);
  return false;
}

test("helm lint --strict passes with the defaults, with every feature on, and with the alternatives", (t) => {
  if (!needsHelm(t)) return;
  const plain = run(["lint", CHART_DIR, "--strict", "--namespace", NAMESPACE]);
  assert.equal(plain.status, 0, `helm lint failed:\n${plain.stdout}\n${plain.stderr}`);
  for (const [name, values] of [["all-features", ALL_FEATURES], ["alternatives", ALTERNATIVES]] as const) {
    withValuesFile(values, (path) => {
      const full = run(["lint", CHART_DIR, "--strict", "--namespace", NAMESPACE, "-f", path]);
      assert.equal(full.status, 0, `helm lint -f ${name} failed:\n${full.stdout}\n${full.stderr}`);
    });
  }
});

test("helm template with the defaults renders valid objects, identical to deploy/k8s but for the Namespace and Helm's labels", (t) => {
  if (!needsHelm(t)) return;
  const rendered = render();
  for (const o of rendered) validateRendered(o, "helm template");
  assert.deepEqual(unknownFields(rendered.map((object) => ({ object, source: "helm template" }))), []);
  const key = (o: K8sObject) => `${o.kind}/${o.metadata.name}`;
  const plain = new Map(loadPlainManifests().map(({ object }) => [key(object), object]));
  plain.delete(`Namespace/${NAMESPACE}`);
  assert.deepEqual(rendered.map(key).sort(), [...plain.keys()].sort(), "deploy/k8s and the chart hold different objects");
  for (const o of rendered) {
    const managedBy = o.metadata.labels?.["app.kubernetes.io/managed-by"];
    assert.equal(managedBy, "Helm");
    assert.deepEqual(withoutHelmBookkeeping(plain.get(key(o))), withoutHelmBookkeeping(o), `deploy/k8s ${key(o)} differs from the chart's rendering`);
  }
});

test("helm template with every feature on renders valid objects wired to the Secrets, the claim and the scaling flags", (t) => {
  if (!needsHelm(t)) return;
  const rendered = withValuesFile(ALL_FEATURES, (path) => render(["-f", path]));
  for (const o of rendered) validateRendered(o, "helm template (all features)");
  assert.deepEqual(unknownFields(rendered.map((object) => ({ object, source: "helm template (all features)" }))), []);
  const kinds = rendered.map((o) => o.kind).sort();
  assert.deepEqual(kinds, [
    "Certificate", "ConfigMap", "CustomResourceDefinition", "Deployment", "PodDisruptionBudget", "PrometheusRule", "Role", "Role", "RoleBinding", "RoleBinding",
    "Service", "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet",
  ], "existingClaim: no PersistentVolumeClaim; one ServiceMonitor, PrometheusRule, dashboard ConfigMap and Certificate; pruneJobs: the CRD and a second Role and RoleBinding");
  const cert = rendered.find((o) => o.kind === "Certificate")!;
  assert.equal(cert.apiVersion, "cert-manager.io/v1");
  const certSpec = cert["spec"] as { secretName: string; usages: string[]; dnsNames: string[]; issuerRef: Record<string, string> };
  assert.equal(certSpec.secretName, "atvp-tls");
  assert.ok(certSpec.usages.includes("server auth") && certSpec.usages.includes("client auth"), "used as server and as client certificate");
  assert.ok(certSpec.dnsNames.includes("workers.atvp"));
  assert.ok(certSpec.dnsNames.includes(`atvp-atv-prune-coordinator.${NAMESPACE}.svc`));
  assert.ok(certSpec.dnsNames.includes("atvp.example.org"), "tls.certManager.dnsNames");
  assert.deepEqual(certSpec.issuerRef, { name: "cluster-ca", kind: "ClusterIssuer", group: "cert-manager.io" });

  const deployment = rendered.find((o) => o.kind === "Deployment")!;
  const sts = rendered.find((o) => o.kind === "StatefulSet")!;
  const coordinator = podTemplate(deployment).spec.containers[0]!;
  const worker = podTemplate(sts).spec.containers[0]!;
  const cargs = coordinator.args ?? [];
  assert.deepEqual(flagValues(cargs, "--k8s-statefulset"), [sts.metadata.name]);
  assert.deepEqual(flagValues(cargs, "--k8s-min-replicas"), ["1"]);
  assert.deepEqual(flagValues(cargs, "--k8s-max-replicas"), ["8"]);
  assert.deepEqual(flagValues(cargs, "--allow-root"), ["/data"]);
  assert.deepEqual(flagValues(cargs, "--nats-creds"), ["/etc/atvp/nats/nats.creds"]);
  for (const f of ["--tls-cert", "--tls-key", "--tls-ca", "--worker-tls-cert", "--worker-tls-key", "--worker-tls-ca"]) assert.equal(flagValues(cargs, f).length, 1, `coordinator ${f}`);
  assert.deepEqual(flagValues(cargs, "--worker-tls-server-name"), ["workers.atvp"]);
  assert.ok(cargs.includes("--tls-require-client-cert"));
  assert.ok(cargs.includes("--watch-prunejobs"), "pruneJobs.enabled");
  assert.deepEqual(flagValues(cargs, "--stall-timeout"), ["300"]);
  assert.ok(cargs.includes("--keep-work"), "coordinator.keepWork");
  const envFrom = (name: string) => coordinator.env?.find((e) => e.name === name)?.valueFrom?.["secretKeyRef"];
  assert.deepEqual(envFrom("ATVP_NATS_USER"), { name: "nats-auth", key: "user", optional: true });
  assert.deepEqual(envFrom("ATVP_NATS_PASSWORD"), { name: "nats-auth", key: "password", optional: true });
  assert.deepEqual(envFrom("ATVP_NATS_TOKEN"), { name: "nats-auth", key: "token", optional: true });
  assert.deepEqual(envFrom("ATVP_TOKEN"), { name: "atvp-token", key: "token" });

  const wargs = worker.args ?? [];
  for (const f of ["--tls-cert", "--tls-key", "--tls-ca"]) assert.equal(flagValues(wargs, f).length, 1, `worker ${f}`);
  assert.ok(!wargs.includes("--insecure"));
  assert.deepEqual(flagValues(wargs, "--tls-server-name"), ["workers.atvp"]);
  assert.deepEqual(flagValues(wargs, "--tls-client-name"), ["atvp-atv-prune-coordinator"]);
  assert.deepEqual(flagValues(wargs, "--allow-root"), ["/data"]);
  assert.deepEqual(flagValues(wargs, "--work-root"), ["/data/jobs"]);
  assert.deepEqual(worker.env?.find((e) => e.name === "ATVP_TOKEN")?.valueFrom?.["secretKeyRef"], { name: "atvp-token", key: "token" });
  assert.deepEqual(flagValues(wargs, "--memory"), ["17179869184"], "a large integer must not come out in float notation");
  assert.equal((sts["spec"] as { replicas?: number }).replicas, undefined, "with autoscaling the coordinator owns spec.replicas");
  assert.equal(podTemplate(sts).spec["runtimeClassName"], "nvidia");
  for (const o of [deployment, sts]) {
    // The kubelet's gRPC probe cannot speak TLS: readiness is /readyz on the metrics port instead.
    const container = podTemplate(o).spec.containers[0]!;
    assert.deepEqual(container.readinessProbe?.httpGet, { path: "/readyz", port: "metrics" }, `${o.kind} readiness with TLS`);
    assert.equal(container.readinessProbe?.["grpc"], undefined, `${o.kind} readiness with TLS`);
    const vols = podTemplate(o).spec.volumes ?? [];
    assert.equal(vols.find((v) => v.persistentVolumeClaim)?.persistentVolumeClaim?.claimName, "shared-rwx");
    assert.equal(vols.find((v) => v.secret?.secretName === "atvp-tls")?.name, "tls");
  }

  const role = rendered.find((o) => o.kind === "Role" && !o.metadata.name.endsWith("-prunejobs"))!;
  assert.deepEqual(role["rules"], [
    { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
    { apiGroups: ["apps"], resources: ["statefulsets"], resourceNames: [sts.metadata.name], verbs: ["get", "patch"] },
    { apiGroups: ["apps"], resources: ["statefulsets/scale"], resourceNames: [sts.metadata.name], verbs: ["get", "patch", "update"] },
  ]);

  const sm = rendered.find((o) => o.kind === "ServiceMonitor")!;
  assert.equal(sm.apiVersion, "monitoring.coreos.com/v1");
  assert.equal(sm.metadata.labels?.["release"], "kps");
  const smSpec = sm["spec"] as { selector: { matchLabels: Record<string, string>; matchExpressions: Array<{ key: string; operator: string; values: string[] }> }; endpoints: Array<{ port: string; path: string }> };
  assert.deepEqual(smSpec.endpoints.map((e) => [e.port, e.path]), [["metrics", "/metrics"]]);
  const services = rendered.filter((o) => o.kind === "Service");
  for (const svc of services) {
    const labels = svc.metadata.labels ?? {};
    const matched = Object.entries(smSpec.selector.matchLabels).every(([k, v]) => labels[k] === v)
      && smSpec.selector.matchExpressions.every((e) => e.operator === "In" && e.values.includes(labels[e.key] ?? ""));
    assert.ok(matched, `the ServiceMonitor does not select Service ${svc.metadata.name}`);
    assert.ok((svc["spec"] as { ports: Array<{ name: string }> }).ports.some((p) => p.name === "metrics"), `${svc.metadata.name} has no metrics port`);
  }

  // The PrometheusRule carries deploy/prometheus/atvp-alerts.yaml's groups unchanged (promtool checks that file).
  const rule = rendered.find((o) => o.kind === "PrometheusRule")!;
  assert.equal(rule.metadata.labels?.["release"], "kps");
  assert.deepEqual(rule["spec"], readYamlFile(join(REPO, "deploy/prometheus/atvp-alerts.yaml")));

  // The dashboard ConfigMap holds the dashboard JSON as it is, labelled for the Grafana sidecar.
  const dashboard = rendered.find((o) => o.kind === "ConfigMap")!;
  assert.equal(dashboard.metadata.labels?.["grafana_dashboard"], "1");
  assert.equal(dashboard.metadata.annotations?.["grafana_folder"], "ATV");
  const data = dashboard["data"] as Record<string, string>;
  assert.deepEqual(Object.keys(data), ["atv-prune.json"]);
  assert.deepEqual(JSON.parse(data["atv-prune.json"]!), JSON.parse(readFileSync(join(CHART_DIR, "files/atv-prune-dashboard.json"), "utf8")));
});

test("with pruneJobs.enabled the chart renders deploy/k8s/prunejobs: the same CRD (kept on uninstall) and the same RBAC", (t) => {
  if (!needsHelm(t)) return;
  const rendered = render(["--set", "pruneJobs.enabled=true"]);
  for (const o of rendered) validateRendered(o, "helm template (pruneJobs)");
  const plainDir = join(PLAIN_DIR, "prunejobs");
  const crd = rendered.find((o) => o.kind === "CustomResourceDefinition")!;
  assert.equal(crd.metadata.annotations?.["helm.sh/resource-policy"], "keep", "deleting the CRD would delete every PruneJob");
  assert.equal(crd.metadata.labels?.["app.kubernetes.io/managed-by"], "Helm");
  const { labels: _l, annotations: _a, ...crdMetadata } = crd.metadata;
  assert.deepEqual({ ...crd, metadata: crdMetadata }, readYamlFile(join(plainDir, "00-crd.yaml")), "the chart's CRD is deploy/k8s/prunejobs/00-crd.yaml");
  const plainRbac = parseYamlDocuments(readFileSync(join(plainDir, "10-rbac.yaml"), "utf8"), "deploy/k8s/prunejobs/10-rbac.yaml").map((o) => asK8sObject(o, "10-rbac.yaml"));
  for (const plain of plainRbac) {
    const chart = rendered.find((o) => o.kind === plain.kind && o.metadata.name === plain.metadata.name);
    assert.ok(chart, `the chart renders no ${plain.kind} ${plain.metadata.name}`);
    assert.deepEqual(withoutHelmBookkeeping(chart), withoutHelmBookkeeping(plain), `deploy/k8s/prunejobs ${plain.kind} ${plain.metadata.name} differs from the chart's rendering`);
  }
  const args = podTemplate(rendered.find((o) => o.kind === "Deployment")!).spec.containers[0]!.args ?? [];
  assert.ok(args.includes("--watch-prunejobs"));
  const without = render(["--set", "pruneJobs.enabled=true", "--set", "pruneJobs.installCRD=false"]);
  assert.equal(without.filter((o) => o.kind === "CustomResourceDefinition").length, 0, "installCRD=false: the CRD is managed elsewhere");
  assert.equal(without.filter((o) => o.metadata.name.endsWith("-prunejobs")).length, 2, "installCRD=false keeps the RBAC");
});

test("helm template with the alternatives renders valid objects: own TLS Secret, no ServiceAccount or RBAC, a created claim without provisioning", (t) => {
  if (!needsHelm(t)) return;
  const rendered = withValuesFile(ALTERNATIVES, (path) => render(["-f", path]));
  for (const o of rendered) validateRendered(o, "helm template (alternatives)");
  assert.deepEqual(unknownFields(rendered.map((object) => ({ object, source: "helm template (alternatives)" }))), []);
  assert.deepEqual(rendered.map((o) => o.kind).sort(), ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "Service", "StatefulSet"],
    "no Certificate (own Secret), ServiceAccount, Role, RoleBinding, CRD (installCRD=false), PodDisruptionBudget or ServiceMonitor");
  for (const o of rendered) {
    assert.ok(o.metadata.name.startsWith("atvp-pruner"), `nameOverride: ${o.kind} ${o.metadata.name}`);
    assert.equal(o.metadata.labels?.["app.kubernetes.io/name"], "pruner", `${o.kind} ${o.metadata.name}`);
  }
  const pvc = rendered.find((o) => o.kind === "PersistentVolumeClaim")!;
  assert.equal((pvc["spec"] as { storageClassName?: string }).storageClassName, "", "storageClassName \"-\" turns dynamic provisioning off");
  assert.equal(pvc.metadata.annotations?.["helm.sh/resource-policy"], undefined, "keepOnUninstall: false");
  assert.equal(pvc.metadata.annotations?.["backup/enabled"], "true");
  const deployment = rendered.find((o) => o.kind === "Deployment")!;
  const sts = rendered.find((o) => o.kind === "StatefulSet")!;
  assert.equal(podTemplate(deployment).spec.serviceAccountName, "existing-sa");
  assert.equal((sts["spec"] as { replicas?: number }).replicas, 0, "replicas: 0 is kept, not dropped as empty");
  const coordinator = podTemplate(deployment).spec.containers[0]!;
  const worker = podTemplate(sts).spec.containers[0]!;
  assert.ok(coordinator.args?.includes("--watch-prunejobs"));
  assert.deepEqual(flagValues(coordinator.args ?? [], "--nats-creds"), ["/etc/atvp/nats/user.creds"]);
  assert.deepEqual(flagValues(coordinator.args ?? [], "--log-level"), ["debug"]);
  assert.deepEqual(flagValues(worker.args ?? [], "--tls-server-name"), [], "no worker server name without cert-manager or tls.workerServerName");
  for (const c of [coordinator, worker]) {
    assert.deepEqual(c.env?.find((e) => e.name === "ATVP_TOKEN")?.valueFrom?.["secretKeyRef"], { name: "atvp-token", key: "secret" });
    assert.equal(c.env?.find((e) => e.name === "EXTRA")?.value, "1");
    assert.ok(c.volumeMounts?.some((m) => m.name === "data" && m.mountPath === "/mnt/shared"));
  }
  for (const o of [deployment, sts]) {
    assert.equal(podTemplate(o).spec.volumes?.find((v) => v.name === "tls")?.secret?.secretName, "own-tls");
    assert.equal(podTemplate(o).metadata.labels["team"], "ml");
    assert.equal(podTemplate(o).spec["priorityClassName"], "high");
  }
  const coordinatorService = rendered.find((o) => o.kind === "Service" && o.metadata.name === "atvp-pruner-coordinator")!;
  assert.equal((coordinatorService["spec"] as { type?: string }).type, "LoadBalancer");
  assert.equal(rendered.find((o) => o.kind === "ConfigMap")!.metadata.labels?.["team"], "ml");
});

test("helm rejects bad values: the schema, and the checks a schema cannot express", (t) => {
  if (!needsHelm(t)) return;
  const cases: Array<[string[], RegExp]> = [
    // Helm 3 names a schema violation's field worker.replicas, Helm 4 /worker/replicas.
    [["--set", "worker.replicas=two"], /worker[./]replicas/],
    [["--set", "unknownKey=1"], /unknownKey/],
    [["--set", "tls.enabled=true"], /tls/],
    [["--set", "tls.certManager.enabled=true", "--set", "tls.certManager.issuerRef.name=ca"], /tls/],
    [["--set", "worker.autoscaling.enabled=true", "--set", "worker.autoscaling.minReplicas=5", "--set", "worker.autoscaling.maxReplicas=2"], /minReplicas/],
    [["--set", "worker.podDisruptionBudget.maxUnavailable=null"], /minAvailable or maxUnavailable/],
    [["--set-string", "worker.podLabels.app\\.kubernetes\\.io/component=gpu"], /app\.kubernetes\.io\/component/],
    [["--set", "pruneJobs.enabled=yes"], /pruneJobs/],
    [["--set", "coordinator.stallTimeoutSeconds=0"], /stallTimeoutSeconds/],
    [["--set", "metrics.serviceMonitor.interval=30"], /interval/],
    [["--set", "metrics.grafanaDashboard.labels.grafana_dashboard=1"], /grafana_dashboard/],
  ];
  for (const [args, message] of cases) {
    const r = run(["template", RELEASE, CHART_DIR, "--namespace", NAMESPACE, ...args]);
    assert.notEqual(r.status, 0, `helm template ${args.join(" ")} succeeded`);
    assert.match(r.stderr, message, `helm template ${args.join(" ")}: unexpected error ${r.stderr}`);
  }
});
