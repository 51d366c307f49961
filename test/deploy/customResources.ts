/**
 * The shape of the chart's objects whose kinds come from other projects' CRDs (cert-manager's
 * Certificate, the Prometheus Operator's ServiceMonitor and PrometheusRule), which
 * kubernetes-models cannot validate. Each schema is a minimal excerpt of the upstream CRD: the
 * required fields, the types and enums the chart's values reach, and closed objects where the
 * upstream object is closed, so a misspelt or misplaced field fails here instead of being pruned
 * by the API server. `validateRendered` checks any rendered object, and fails for a kind that
 * has neither a kubernetes-models class nor a schema here.
 */
import { Ajv, type ValidateFunction } from "ajv";
import { hasModelFor, validateWithKubernetesModels, type K8sObject } from "./deployFiles.js";

type Schema = Record<string, unknown>;

const stringMap: Schema = { type: "object", additionalProperties: { type: "string" } };
const metadata: Schema = {
  type: "object",
  required: ["name", "namespace"],
  properties: {
    name: { type: "string", maxLength: 253, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" },
    namespace: { type: "string" },
    labels: stringMap,
    annotations: stringMap,
  },
};
function object(required: string[], properties: Record<string, Schema>): Schema {
  return { type: "object", required, properties, additionalProperties: false };
}
const stringArray: Schema = { type: "array", items: { type: "string" } };
// Go's time.Duration text (cert-manager) and the Prometheus Operator's Duration.
const goDuration: Schema = { type: "string", pattern: "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$" };
const promDuration: Schema = { type: "string", pattern: "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$" };
const labelSelector = object([], {
  matchLabels: stringMap,
  matchExpressions: { type: "array", items: object(["key", "operator"], { key: { type: "string" }, operator: { enum: ["In", "NotIn", "Exists", "DoesNotExist"] }, values: stringArray }) },
});

function resource(spec: Schema): Schema {
  return { type: "object", required: ["apiVersion", "kind", "metadata", "spec"], properties: { apiVersion: {}, kind: {}, metadata, spec }, additionalProperties: false };
}

// cert-manager.io/v1 Certificate (cert-manager's CRD: spec.secretName and spec.issuerRef required).
const certificate = resource(object(["secretName", "issuerRef"], {
  secretName: { type: "string", minLength: 1 },
  secretTemplate: object([], { labels: stringMap, annotations: stringMap }),
  commonName: { type: "string", maxLength: 64 },
  dnsNames: { ...stringArray, minItems: 1 },
  ipAddresses: stringArray,
  uris: stringArray,
  emailAddresses: stringArray,
  duration: goDuration,
  renewBefore: goDuration,
  isCA: { type: "boolean" },
  usages: {
    type: "array",
    items: {
      enum: ["signing", "digital signature", "content commitment", "key encipherment", "key agreement", "data encipherment", "cert sign", "crl sign",
        "encipher only", "decipher only", "any", "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
        "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"],
    },
  },
  privateKey: object([], {
    algorithm: { enum: ["RSA", "ECDSA", "Ed25519"] },
    size: { type: "integer" },
    encoding: { enum: ["PKCS1", "PKCS8"] },
    rotationPolicy: { enum: ["Never", "Always"] },
  }),
  issuerRef: object(["name"], { name: { type: "string", minLength: 1 }, kind: { type: "string" }, group: { type: "string" } }),
}));

// monitoring.coreos.com/v1 ServiceMonitor (spec.selector required; endpoints scrape named ports).
const serviceMonitor = resource(object(["selector", "endpoints"], {
  selector: labelSelector,
  namespaceSelector: object([], { any: { type: "boolean" }, matchNames: stringArray }),
  jobLabel: { type: "string" },
  targetLabels: stringArray,
  podTargetLabels: stringArray,
  endpoints: {
    type: "array",
    minItems: 1,
    items: object([], {
      port: { type: "string" },
      targetPort: { type: ["string", "integer"] },
      path: { type: "string" },
      scheme: { enum: ["http", "https", "HTTP", "HTTPS"] },
      interval: promDuration,
      scrapeTimeout: promDuration,
      honorLabels: { type: "boolean" },
      honorTimestamps: { type: "boolean" },
      tlsConfig: { type: "object" },
      relabelings: { type: "array" },
      metricRelabelings: { type: "array" },
      params: { type: "object" },
    }),
  },
}));

// monitoring.coreos.com/v1 PrometheusRule: groups of alerting or recording rules.
const rule: Schema = {
  ...object(["expr"], {
    alert: { type: "string", minLength: 1 },
    record: { type: "string", minLength: 1 },
    expr: { type: ["string", "integer"] },
    for: promDuration,
    keep_firing_for: promDuration,
    labels: stringMap,
    annotations: stringMap,
  }),
  oneOf: [{ required: ["alert"] }, { required: ["record"] }],
};
const prometheusRule = resource(object(["groups"], {
  groups: {
    type: "array",
    items: object(["name", "rules"], {
      name: { type: "string", minLength: 1 },
      interval: promDuration,
      query_offset: promDuration,
      limit: { type: "integer" },
      labels: stringMap,
      partial_response_strategy: { type: "string" },
      rules: { type: "array", minItems: 1, items: rule },
    }),
  },
}));

// strictRequired off: the oneOf branches name properties declared beside them, not inside.
const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true });
const SCHEMAS: Record<string, ValidateFunction> = {
  "cert-manager.io/v1/Certificate": ajv.compile(certificate),
  "monitoring.coreos.com/v1/ServiceMonitor": ajv.compile(serviceMonitor),
  "monitoring.coreos.com/v1/PrometheusRule": ajv.compile(prometheusRule),
};

export function hasShapeFor(obj: K8sObject): boolean {
  return `${obj.apiVersion}/${obj.kind}` in SCHEMAS;
}

/** Checks a custom resource against its minimal schema; throws naming the object and the fields. */
export function validateCustomResource(obj: K8sObject, source: string): void {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const validate = SCHEMAS[key];
  if (!validate) throw new Error(`${source}: ${key} ${obj.metadata.name}: no schema for this custom resource kind`);
  // A ValidateFunction is a type guard; a separate boolean keeps `obj` typed in the message.
  const valid = validate(obj as unknown);
  if (!valid) {
    const errors = (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message ?? ""}${e.params && "additionalProperty" in e.params ? ` (${String(e.params["additionalProperty"])})` : ""}`);
    throw new Error(`${source}: ${obj.kind} ${obj.metadata.name} does not match its CRD: ${errors.join("; ")}`);
  }
}

/** Validates any object the chart renders: kubernetes-models for Kubernetes kinds, else the shapes above. */
export function validateRendered(obj: K8sObject, source: string): void {
  if (hasModelFor(obj)) validateWithKubernetesModels(obj, source);
  else if (hasShapeFor(obj)) validateCustomResource(obj, source);
  else throw new Error(`${source}: ${obj.apiVersion}/${obj.kind} ${obj.metadata.name}: neither kubernetes-models nor test/deploy/customResources.ts can check this kind: add it to one`);
}
