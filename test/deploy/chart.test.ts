// helm/atv-prune without helm: Chart.yaml, values.yaml against values.schema.json (ajv, draft-07),
// bad values rejected, every value described, and templates that only read values that exist
// and only include templates that are defined.
import { strict as assert } from "node:assert";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Ajv, type ValidateFunction } from "ajv";
import { CHART_DIR, readYamlFile } from "./deployFiles.js";

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = { [key: string]: Json };

const chart = readYamlFile(join(CHART_DIR, "Chart.yaml")) as Record<string, unknown>;
const values = readYamlFile(join(CHART_DIR, "values.yaml")) as { [key: string]: Json };
const schema = JSON.parse(readFileSync(join(CHART_DIR, "values.schema.json"), "utf8")) as Schema;
const templateDir = join(CHART_DIR, "templates");
// Template text without its {{/* comments */}}, which Helm does not evaluate.
const templates = readdirSync(templateDir).sort().map((name) => ({ name, text: readFileSync(join(templateDir, name), "utf8").replace(/\{\{-?\s*\/\*[\s\S]*?\*\/\s*-?\}\}/g, "") }));

function compileSchema(): ValidateFunction {
  const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
  return ajv.compile(schema);
}
const validate = compileSchema();

function errorsOf(v: unknown): string {
  validate(v);
  return (validate.errors ?? []).map((e) => `${e.instancePath || "(root)"} ${e.message}`).join("; ");
}

/** values.yaml with `patch` applied at a dotted path (undefined deletes the key). */
function withValue(path: string, value: Json | undefined): unknown {
  const copy = structuredClone(values) as { [key: string]: Json };
  const keys = path.split(".");
  let node = copy;
  for (const k of keys.slice(0, -1)) node = node[k] as { [key: string]: Json };
  if (value === undefined) delete node[keys[keys.length - 1]!];
  else node[keys[keys.length - 1]!] = value;
  return copy;
}

function deref(node: Schema): Schema {
  let n = node;
  for (let guard = 0; typeof n["$ref"] === "string"; guard++) {
    assert.ok(guard < 20, "$ref cycle in values.schema.json");
    const ref = n["$ref"] as string;
    assert.ok(ref.startsWith("#/definitions/"), `unsupported $ref ${ref}`);
    const target = (schema["definitions"] as Record<string, Schema>)[ref.slice("#/definitions/".length)];
    assert.ok(target, `$ref ${ref} points nowhere`);
    n = target;
  }
  return n;
}

test("Chart.yaml is a v2 application chart named atv-prune with a version and an appVersion", () => {
  assert.equal(chart["apiVersion"], "v2");
  assert.equal(chart["name"], "atv-prune");
  assert.equal(chart["type"], "application");
  assert.match(String(chart["version"]), /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/);
  assert.equal(typeof chart["appVersion"], "string");
  const pkg = JSON.parse(readFileSync(join(CHART_DIR, "../../package.json"), "utf8")) as { version: string };
  assert.equal(chart["appVersion"], pkg.version, "appVersion (the default image tag) follows package.json's version");
});

test("values.schema.json is a draft-07 schema that closes the top level", () => {
  assert.equal(schema["$schema"], "http://json-schema.org/draft-07/schema#");
  assert.equal(schema["type"], "object");
  assert.equal(schema["additionalProperties"], false);
});

test("values.yaml validates against values.schema.json", () => {
  assert.equal(errorsOf(values), "");
});

test("the schema accepts the documented non-default settings", () => {
  const full = withValue("tls", { enabled: true, secretName: "atvp-tls", requireClientCert: true, workerServerName: "w" }) as { [key: string]: Json };
  (full["worker"] as { [key: string]: Json })["autoscaling"] = { enabled: true, minReplicas: 1, maxReplicas: 8 };
  (full["worker"] as { [key: string]: Json })["memoryBytes"] = 17179869184;
  (full["worker"] as { [key: string]: Json })["podDisruptionBudget"] = { enabled: true, minAvailable: "50%", maxUnavailable: null };
  (full["storage"] as { [key: string]: Json })["existingClaim"] = "shared";
  (full["storage"] as { [key: string]: Json })["storageClassName"] = "-";
  (full["nats"] as { [key: string]: Json })["existingSecret"] = "nats-auth";
  full["auth"] = { existingSecret: "atvp-token", tokenKey: "token" };
  full["metrics"] = { serviceMonitor: { enabled: true, interval: "15s", scrapeTimeout: "5s", labels: { release: "kps" } } };
  full["imagePullSecrets"] = [{ name: "regcred" }];
  assert.equal(errorsOf(full), "");
  // cert-manager issues the certificate: no secretName needed.
  const certManager = withValue("tls", {
    enabled: true, secretName: "", requireClientCert: false, workerServerName: "", workerClientNames: ["atvp-atv-prune-coordinator"],
    certManager: { enabled: true, issuerRef: { name: "cluster-ca", kind: "ClusterIssuer", group: "cert-manager.io" }, duration: "720h", renewBefore: "72h", dnsNames: ["atvp.example"] },
  });
  assert.equal(errorsOf(certManager), "");
});

const BAD: Array<[string, string, Json | undefined]> = [
  ["worker.replicas is a word", "worker.replicas", "two"],
  ["an unknown top-level key", "replicas", 2],
  ["an unknown key under worker", "worker.gpus", 1],
  ["worker.device outside cuda|cpu|auto", "worker.device", "gpu"],
  ["a port above 65535", "coordinator.grpcPort", 70000],
  ["worker.threads 0", "worker.threads", 0],
  ["a GPU count that is not a quantity", "worker.resources", { limits: { "nvidia.com/gpu": "one" } }],
  ["a NATS URL without a scheme", "nats.url", "nats:4222"],
  ["no access modes", "storage.accessModes", []],
  ["a relative mount path", "storage.mountPath", "data"],
  ["an absolute allowed root (they are relative to the mount path)", "coordinator.allowedRoots", ["/etc"]],
  ["tls.enabled without a secretName", "tls", { enabled: true }],
  ["tls.certManager.enabled without tls.enabled", "tls", { enabled: false, certManager: { enabled: true, issuerRef: { name: "ca" } } }],
  ["tls.certManager.enabled without an issuer name", "tls", { enabled: true, certManager: { enabled: true, issuerRef: { name: "" } } }],
  ["an issuer kind that does not exist", "tls.certManager.issuerRef.kind", "Vault"],
  ["a certificate duration without a unit", "tls.certManager.duration", "90"],
  ["an empty worker client name", "tls.workerClientNames", [""]],
  ["a Service type that does not exist", "coordinator.service.type", "Ingress"],
  ["no worker image", "worker.image", undefined],
  ["a scrape interval without a unit", "metrics.serviceMonitor.interval", "30"],
];

for (const [what, path, value] of BAD) {
  test(`the schema rejects ${what} (${path})`, () => {
    assert.notEqual(errorsOf(withValue(path, value)), "", `${path} = ${JSON.stringify(value)} was accepted`);
  });
}

test("every key in values.yaml is described in values.schema.json", () => {
  const missing: string[] = [];
  const walk = (node: Schema, value: Json, path: string): void => {
    const s = deref(node);
    const props = s["properties"] as Record<string, Schema> | undefined;
    if (!props || value === null || typeof value !== "object" || Array.isArray(value)) return;
    for (const [key, child] of Object.entries(value)) {
      const p = props[key];
      const at = path ? `${path}.${key}` : key;
      if (!p) {
        missing.push(`${at} (not in the schema)`);
        continue;
      }
      if (typeof p["description"] !== "string" && typeof deref(p)["description"] !== "string") missing.push(`${at} (no description)`);
      walk(p, child, at);
    }
  };
  walk(schema, values, "");
  assert.deepEqual(missing, []);
});

test("templates read only values that exist in values.yaml", () => {
  const missing: string[] = [];
  for (const { name, text } of templates) {
    for (const m of text.matchAll(/\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)) {
      const path = m[1]!.slice(1).split(".");
      let node: Json = values;
      for (const key of path) {
        if (node === null || typeof node !== "object" || Array.isArray(node) || !(key in node)) {
          missing.push(`${name}: .Values.${path.join(".")}`);
          break;
        }
        node = node[key]!;
      }
    }
  }
  assert.deepEqual([...new Set(missing)], []);
});

test("templates include only templates that are defined, and the helpers define name, fullname, labels and selectorLabels", () => {
  const defined = new Set<string>();
  for (const { text } of templates) for (const m of text.matchAll(/\{\{-?\s*define\s+"([^"]+)"/g)) defined.add(m[1]!);
  for (const required of ["atv-prune.name", "atv-prune.fullname", "atv-prune.chart", "atv-prune.labels", "atv-prune.selectorLabels"]) {
    assert.ok(defined.has(required), `_helpers.tpl does not define ${required}`);
  }
  for (const { name, text } of templates) {
    for (const m of text.matchAll(/(?:include|template)\s+"([^"]+)"/g)) assert.ok(defined.has(m[1]!), `${name} includes "${m[1]}", which no template defines`);
  }
});

test("labels use app.kubernetes.io/*, and the selector labels are a fixed subset of them", () => {
  const helpers = templates.find((t) => t.name === "_helpers.tpl")!.text;
  const block = (name: string) => {
    // from the define to the next define (or the end of the file)
    const m = new RegExp(`define "${name.replace(/\./g, "\\.")}"[^\\n]*\\n([\\s\\S]*?)(?=\\{\\{-? define |$)`).exec(helpers);
    assert.ok(m, `${name} not found`);
    return m[1]!;
  };
  const selector = block("atv-prune.selectorLabels");
  assert.match(selector, /app\.kubernetes\.io\/name:/);
  assert.match(selector, /app\.kubernetes\.io\/instance:/);
  assert.doesNotMatch(selector, /version|helm\.sh\/chart/, "selector labels must not change across upgrades");
  const labels = block("atv-prune.labels");
  assert.match(labels, /include "atv-prune\.selectorLabels"/);
  assert.match(labels, /app\.kubernetes\.io\/managed-by: \{\{ \.Release\.Service \}\}/);
});

test("workers get the allowed roots, the work root, TLS (or --insecure) and the token; the Certificate only with cert-manager on", () => {
  const text = (name: string) => templates.find((t) => t.name === name)!.text;
  const sts = text("worker-statefulset.yaml");
  assert.match(sts, /range \.Values\.coordinator\.allowedRoots \}\}\s*- --allow-root/);
  assert.match(sts, /- --work-root\s*- \{\{ include "atv-prune\.underMount" \(list \$ \.Values\.coordinator\.workRoot\)/);
  assert.match(sts, /\{\{- else \}\}\s*#[^\n]*\n\s*- --insecure/);
  assert.match(sts, /name: ATVP_TOKEN\s*valueFrom:\s*secretKeyRef:\s*name: \{\{ \.Values\.auth\.existingSecret/);
  for (const t of ["worker-statefulset.yaml", "coordinator-deployment.yaml"]) assert.match(text(t), /secretName: \{\{ include "atv-prune\.tlsSecretName" \. \| quote \}\}/, t);
  const cert = text("certificate.yaml");
  assert.match(cert, /^\{\{- if and \.Values\.tls\.enabled \.Values\.tls\.certManager\.enabled \}\}/);
  assert.match(cert, /apiVersion: cert-manager\.io\/v1\nkind: Certificate/);
  assert.match(cert, /- server auth\n\s*- client auth/);
  assert.match(cert, /secretName: \{\{ include "atv-prune\.tlsSecretName" \. \| quote \}\}/);
  assert.match(cert, /- \{\{ include "atv-prune\.workerServerName" \. \| quote \}\}/);
});

test("the chart has the expected templates, and NOTES.txt explains port-forward, submit and watch", () => {
  const names = templates.map((t) => t.name);
  for (const n of ["NOTES.txt", "_helpers.tpl", "certificate.yaml", "coordinator-deployment.yaml", "coordinator-service.yaml", "worker-statefulset.yaml", "worker-service.yaml", "worker-pdb.yaml", "rbac.yaml", "serviceaccount.yaml", "pvc.yaml", "servicemonitor.yaml"]) {
    assert.ok(names.includes(n), `templates/${n} missing`);
  }
  const notes = templates.find((t) => t.name === "NOTES.txt")!.text;
  assert.match(notes, /kubectl -n \{\{ \$ns \}\} port-forward svc\//);
  assert.match(notes, /atvp submit \{\{ \$conn \}\}/);
  assert.match(notes, /\$conn := printf "--coordinator 127\.0\.0\.1:%v"/);
  assert.match(notes, /atvp watch JOB/);
});
