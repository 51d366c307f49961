// The PruneJob CustomResourceDefinition: a structural schema (what the API server requires of a
// v1 CRD), the same defaults as the engine, the same field checks as gRPC SubmitJob (each bad
// spec refused by both), printer columns that point at real fields, the example valid, and the
// RBAC for --watch-prunejobs in deploy/k8s and in the chart.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Ajv } from "ajv";
import { CustomResourceDefinition } from "kubernetes-models/apiextensions.k8s.io/v1/CustomResourceDefinition";
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { JobSpecSchema } from "../../services/gen/atvprune/v1/job_pb.js";
import { validateJobSpec } from "../../services/rpc/pathPolicy.js";
import { toPruneSpec } from "../../services/rpc/jobSpec.js";
import { resolveSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { CHART_DIR, REPO, loadPlainManifests, parseYamlDocuments, readYamlFile, validateWithKubernetesModels, asK8sObject } from "./deployFiles.js";

type Schema = { [key: string]: unknown };
const CRD_FILE = join(REPO, "deploy/k8s/prunejobs/00-crd.yaml");
const crd = readYamlFile(CRD_FILE) as { apiVersion: string; kind: string; metadata: { name: string }; spec: { group: string; names: Record<string, unknown>; scope: string; versions: Array<{ name: string; served: boolean; storage: boolean; subresources: Record<string, unknown>; additionalPrinterColumns: Array<{ name: string; jsonPath: string }>; schema: { openAPIV3Schema: Schema } }> } };
const version = crd.spec.versions[0]!;
const root = version.schema.openAPIV3Schema;

/** The OpenAPI v3.0 schema as draft-07 JSON Schema (boolean exclusiveMaximum; no x-kubernetes-*). */
function toJsonSchema(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(toJsonSchema);
  if (node === null || typeof node !== "object") return node;
  const out: Schema = {};
  for (const [k, v] of Object.entries(node as Schema)) {
    if (k.startsWith("x-kubernetes-")) continue;
    if (k === "exclusiveMaximum" && v === true) out[k] = (node as Schema)["maximum"];
    else if (k === "properties") out[k] = Object.fromEntries(Object.entries(v as Schema).map(([p, s]) => [p, toJsonSchema(s)]));
    else out[k] = toJsonSchema(v);
  }
  if (out["exclusiveMaximum"] !== undefined) delete out["maximum"];
  return out;
}

const ajv = new Ajv({ allErrors: true, strict: false, useDefaults: true });
ajv.addFormat("int64", true);
ajv.addFormat("date-time", true);
const validateSpec = ajv.compile(toJsonSchema((root["properties"] as Schema)["spec"]) as object);

function crdAccepts(spec: Record<string, unknown>): boolean {
  return validateSpec(structuredClone(spec)) as boolean;
}

function apiAccepts(spec: Record<string, unknown>): boolean {
  try {
    validateJobSpec(fromJson(JobSpecSchema, spec as JsonValue));
    return true;
  } catch {
    return false;
  }
}

const BASE = { model: "/data/m/model.onnx", calib: "/data/c/calib.jsonl", out: "/data/o", method: "atv", sparsity: 0.5 };

test("the chart installs the same CRD file as deploy/k8s/prunejobs", () => {
  assert.equal(readFileSync(join(CHART_DIR, "files/prunejob-crd.yaml"), "utf8"), readFileSync(CRD_FILE, "utf8"));
  const template = readFileSync(join(CHART_DIR, "templates/prunejob-crd.yaml"), "utf8");
  assert.match(template, /if and \.Values\.pruneJobs\.enabled \.Values\.pruneJobs\.installCRD/);
  assert.match(template, /\.Files\.Get "files\/prunejob-crd\.yaml"/);
});

test("PruneJob is atvprune.dev/v1alpha1, namespaced, with a status subresource and printer columns on real fields", () => {
  const { apiVersion: _a, kind: _k, ...data } = crd;
  new CustomResourceDefinition(data as never).validate();
  assert.equal(crd.apiVersion, "apiextensions.k8s.io/v1");
  assert.equal(crd.kind, "CustomResourceDefinition");
  assert.equal(crd.metadata.name, "prunejobs.atvprune.dev");
  assert.equal(crd.spec.group, "atvprune.dev");
  assert.equal(crd.spec.scope, "Namespaced");
  assert.equal(crd.spec.names["kind"], "PruneJob");
  assert.equal(crd.spec.names["plural"], "prunejobs");
  assert.equal(version.name, "v1alpha1");
  assert.ok(version.served && version.storage);
  assert.deepEqual(version.subresources, { status: {} });
  for (const col of version.additionalPrinterColumns) {
    let node: Schema | undefined = root;
    for (const part of col.jsonPath.replace(/^\./, "").split(".")) node = (node?.["properties"] as Schema | undefined)?.[part] as Schema | undefined;
    assert.ok(node?.["type"] || col.jsonPath === ".metadata.creationTimestamp", `printer column ${col.name}: ${col.jsonPath} is not in the schema`);
  }
  assert.deepEqual(version.additionalPrinterColumns.map((c) => c.name).slice(0, 3), ["State", "Blocks", "Total"]);
  const status = (root["properties"] as Schema)["status"] as { properties: Schema };
  for (const f of ["state", "blocksDone", "lastEvent", "output", "conditions", "jobId"]) assert.ok(f in status.properties, `status.${f}`);
});

test("the schema is structural: every node has a type, junctors hold only value checks on declared fields", () => {
  const problems: string[] = [];
  // `outer`: the structural node a junctor's fields must be declared in.
  const walk = (node: Schema, path: string, inJunctor: boolean, outer: Schema = node) => {
    if (!inJunctor && path !== "metadata" && typeof node["type"] !== "string") problems.push(`${path}: no type`);
    if (inJunctor) for (const k of ["type", "default", "description", "additionalProperties", "nullable"]) if (k in node) problems.push(`${path}: ${k} inside a junctor`);
    for (const [k, v] of Object.entries((node["properties"] as Schema | undefined) ?? {})) walk(v as Schema, `${path}.${k}`, inJunctor);
    if (node["items"]) walk(node["items"] as Schema, `${path}[]`, inJunctor);
    for (const j of ["allOf", "anyOf", "oneOf"]) {
      for (const [i, sub] of ((node[j] as Schema[] | undefined) ?? []).entries()) {
        for (const p of Object.keys((sub["properties"] as Schema | undefined) ?? {})) {
          if (!((outer["properties"] as Schema | undefined) ?? {})[p]) problems.push(`${path}.${j}[${i}]: ${p} not declared outside the junctor`);
        }
        walk(sub, `${path}.${j}[${i}]`, true, outer);
      }
    }
  };
  walk(root, "", false);
  assert.deepEqual(problems, []);
});

test("the CRD's defaults are the engine's (what SubmitJob uses for an unset field)", () => {
  const spec: Record<string, unknown> = { ...BASE };
  assert.ok(validateSpec(spec), JSON.stringify(validateSpec.errors));
  const resolved = resolveSpec(toPruneSpec(fromJson(JobSpecSchema, BASE)), 1);
  assert.equal(spec["pattern"], "unstructured");
  assert.deepEqual(resolved.pattern, { kind: "unstructured" });
  assert.equal(spec["alpha"], resolved.alpha);
  assert.equal(spec["propagation"], resolved.propagation);
  assert.equal(spec["seed"], resolved.seed);
  assert.equal(spec["magnitudeScope"], resolved.magnitudeScope);
  assert.equal(spec["stats"], resolved.stats);
  // Unset: uniform, or the method's own profile (tamp's DAS), as for SubmitJob.
  assert.equal(spec["sparsityProfile"], undefined);
  assert.equal(resolved.sparsityProfile, "uniform");
  assert.equal(spec["force"], resolved.force);
  assert.equal(spec["workers"], 0);
  assert.equal(spec["replicas"], 0);
  // With the defaults filled in, the API resolves the same spec, for every method.
  assert.deepEqual(resolveSpec(toPruneSpec(fromJson(JobSpecSchema, spec as JsonValue)), 1), resolved);
  const tamp: Record<string, unknown> = { ...BASE, method: "tamp" };
  assert.ok(validateSpec(tamp), JSON.stringify(validateSpec.errors));
  assert.deepEqual(resolveSpec(toPruneSpec(fromJson(JobSpecSchema, tamp as JsonValue)), 1), resolveSpec(toPruneSpec(fromJson(JobSpecSchema, { ...BASE, method: "tamp" })), 1));
  assert.equal(resolveSpec(toPruneSpec(fromJson(JobSpecSchema, tamp as JsonValue)), 1).sparsityProfile, "das");
});

test("every spec the gRPC API refuses for a field, the CRD refuses too (and both accept the valid ones)", () => {
  const bad: Array<[string, Record<string, unknown>]> = [
    ["unknown method", { ...BASE, method: "sgd" }],
    ["sparsity 1", { ...BASE, sparsity: 1 }],
    ["negative sparsity", { ...BASE, sparsity: -0.1 }],
    ["unknown sparsity profile", { ...BASE, sparsityProfile: "flat" }],
    ["negative alpha", { ...BASE, alpha: -1 }],
    ["unknown propagation", { ...BASE, propagation: "both" }],
    ["nsamples 0", { ...BASE, nsamples: 0 }],
    ["nsamples beyond uint32", { ...BASE, nsamples: 2 ** 32 }],
    ["unknown magnitude scope", { ...BASE, method: "magnitude", magnitudeScope: "row" }],
    ["malformed pattern", { ...BASE, pattern: "2-4" }],
    ["atv without calib", { ...BASE, calib: undefined }],
    ["no model", { ...BASE, model: undefined }],
    ["no out", { ...BASE, out: undefined }],
    ["seed beyond 2^53", { ...BASE, seed: 2 ** 53 }],
    ["unknown stats", { ...BASE, stats: "gpu" }],
    ["replicas for magnitude", { ...BASE, method: "magnitude", calib: undefined, replicas: 2 }],
  ];
  for (const [what, raw] of bad) {
    const spec = JSON.parse(JSON.stringify(raw)) as Record<string, unknown>;
    assert.equal(apiAccepts(spec), false, `gRPC accepts ${what}`);
    assert.equal(crdAccepts(spec), false, `the CRD accepts ${what}`);
  }
  const good: Array<[string, Record<string, unknown>]> = [
    ["the base", BASE],
    ["N:M without sparsity", { ...BASE, method: "wanda", sparsity: undefined, pattern: "2:4" }],
    ["no sparsity (the API's default 0.5)", { ...BASE, sparsity: undefined }],
    ["magnitude without calib", { ...BASE, method: "magnitude", calib: undefined }],
    ["replicas for sparsegpt", { ...BASE, method: "sparsegpt", replicas: 2 }],
    ["replicas for atv-sparsegpt", { ...BASE, method: "atv-sparsegpt", replicas: 3 }],
    ["replicas for tamp", { ...BASE, method: "tamp", replicas: 2 }],
    ["every field", { ...BASE, pattern: "unstructured", alpha: 4, propagation: "dense", nsamples: 8, seed: 7, include: ["mlp"], exclude: ["q_proj"], magnitudeScope: "matrix", force: true, workers: 2, stats: "graph", replicas: 2 }],
  ];
  for (const [what, raw] of good) {
    const spec = JSON.parse(JSON.stringify(raw)) as Record<string, unknown>;
    assert.equal(apiAccepts(spec), true, `gRPC refuses ${what}`);
    assert.equal(crdAccepts(spec), true, `the CRD refuses ${what}: ${JSON.stringify(validateSpec.errors)}`);
  }
});

test("deploy/examples/prunejob.yaml is a valid PruneJob", () => {
  const example = readYamlFile(join(REPO, "deploy/examples/prunejob.yaml")) as { apiVersion: string; kind: string; spec: Record<string, unknown> };
  assert.equal(example.apiVersion, "atvprune.dev/v1alpha1");
  assert.equal(example.kind, "PruneJob");
  assert.ok(crdAccepts(example.spec), JSON.stringify(validateSpec.errors));
});

test("the PruneJob RBAC grants exactly what the controller does, in deploy/k8s and in the chart", () => {
  const text = readFileSync(join(REPO, "deploy/k8s/prunejobs/10-rbac.yaml"), "utf8");
  const objects = parseYamlDocuments(text, "deploy/k8s/prunejobs/10-rbac.yaml").map((o) => asK8sObject(o, "10-rbac.yaml"));
  for (const o of objects) validateWithKubernetesModels(o, "deploy/k8s/prunejobs/10-rbac.yaml");
  const role = objects.find((o) => o.kind === "Role")!;
  const rules = [
    { apiGroups: ["atvprune.dev"], resources: ["prunejobs"], verbs: ["get", "list", "watch", "patch"] },
    { apiGroups: ["atvprune.dev"], resources: ["prunejobs/status"], verbs: ["get", "patch"] },
  ];
  assert.deepEqual(role["rules"], rules);
  const binding = objects.find((o) => o.kind === "RoleBinding")!;
  const sa = loadPlainManifests().find(({ object }) => object.kind === "ServiceAccount")!.object;
  assert.deepEqual((binding["subjects"] as Array<{ name: string }>)[0]!.name, sa.metadata.name);
  assert.equal((binding["roleRef"] as { name: string }).name, role.metadata.name);
  // The chart's template holds the same rules, behind pruneJobs.enabled.
  const template = readFileSync(join(CHART_DIR, "templates/prunejob-rbac.yaml"), "utf8");
  assert.match(template, /^\{\{- if and \.Values\.pruneJobs\.enabled \.Values\.rbac\.create \}\}/);
  const block = (t: string) => /rules:\n([\s\S]*?)\n---/.exec(t)![1];
  assert.equal(block(template), block(text));
  const deployment = readFileSync(join(CHART_DIR, "templates/coordinator-deployment.yaml"), "utf8");
  assert.match(deployment, /\{\{- if \.Values\.pruneJobs\.enabled \}\}\n\s+- --watch-prunejobs\n/);
});
