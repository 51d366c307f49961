// deploy/k8s/*.yaml: valid Kubernetes objects that wire together (selectors, names, ports,
// RBAC, the shared volume), run the real entry points with flags they accept, and say the same
// as the chart's values.yaml.
import { strict as assert } from "node:assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { parseWorkerArgs } from "../../services/worker/src/workerArgs.js";
import {
  CHART_DIR, NAMESPACE, REPO, flagValues, loadPlainManifests, podTemplate, readYamlFile, selects, unknownFields, validateWithKubernetesModels,
  type Container, type K8sObject, type PodSpec,
} from "./deployFiles.js";

const manifests = loadPlainManifests();
const objects = manifests.map((m) => m.object);

function only(kind: string, filter: (o: K8sObject) => boolean = () => true): K8sObject {
  const found = objects.filter((o) => o.kind === kind && filter(o));
  assert.equal(found.length, 1, `expected exactly one ${kind} in deploy/k8s, found ${found.map((o) => o.metadata.name).join(", ") || "none"}`);
  return found[0]!;
}
const component = (c: string) => (o: K8sObject) => o.metadata.labels?.["app.kubernetes.io/component"] === c;

const deployment = only("Deployment");
const statefulSet = only("StatefulSet");
const coordinatorService = only("Service", component("coordinator"));
const workerService = only("Service", component("worker"));
const coordinatorPod = podTemplate(deployment);
const workerPod = podTemplate(statefulSet);
const coordinator = coordinatorPod.spec.containers[0]!;
const worker = workerPod.spec.containers[0]!;

// The chart's defaults, which the plain manifests are a rendering of.
interface Values {
  storage: { mountPath: string; size: string; accessModes: string[] };
  coordinator: ComponentValues & { workRoot: string; allowedRoots: string[] };
  worker: ComponentValues & { replicas: number; threads: number; device: string; podManagementPolicy: string; podDisruptionBudget: { maxUnavailable: number } };
  nats: { url: string };
}
interface ComponentValues {
  image: { repository: string; pullPolicy: string };
  grpcPort: number;
  metricsPort: number;
  resources: unknown;
  tolerations: unknown[];
  nodeSelector: Record<string, string>;
  podSecurityContext: unknown;
  securityContext: unknown;
  livenessProbe: Record<string, number>;
  readinessProbe: Record<string, number>;
  terminationGracePeriodSeconds: number;
}
const values = readYamlFile(join(CHART_DIR, "values.yaml")) as Values;
const chart = readYamlFile(join(CHART_DIR, "Chart.yaml")) as { appVersion: string };

function port(c: Container, name: string): number {
  const p = c.ports?.find((x) => x.name === name);
  assert.ok(p, `container ${c.name} has no port named ${name}`);
  return p.containerPort;
}

function envNames(c: Container): Set<string> {
  return new Set((c.env ?? []).map((e) => e.name));
}

test("every object in deploy/k8s parses and validates against the Kubernetes API schema (kubernetes-models)", () => {
  assert.ok(manifests.length > 0, "deploy/k8s has no objects");
  for (const { file, object } of manifests) validateWithKubernetesModels(object, `deploy/k8s/${file}`);
});

test("no object in deploy/k8s has a field the Kubernetes API does not know (strict validation)", () => {
  assert.deepEqual(unknownFields(manifests.map(({ file, object }) => ({ object, source: `deploy/k8s/${file}` }))), []);
});

test("deploy/k8s holds exactly the expected kinds: no ServiceMonitor (needs the operator's CRD)", () => {
  const kinds = objects.map((o) => o.kind).sort();
  assert.deepEqual(kinds, ["Deployment", "Namespace", "PersistentVolumeClaim", "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount", "StatefulSet"]);
});

test("the Namespace comes first, and every other object lives in it under a unique name", () => {
  assert.equal(objects[0]!.kind, "Namespace", "kubectl apply -f deploy/k8s/ must create the namespace before the objects in it");
  assert.equal(objects[0]!.metadata.name, NAMESPACE);
  const seen = new Set<string>();
  for (const o of objects.slice(1)) {
    assert.equal(o.metadata.namespace, NAMESPACE, `${o.kind} ${o.metadata.name} must be in namespace ${NAMESPACE}`);
    const key = `${o.kind}/${o.metadata.name}`;
    assert.ok(!seen.has(key), `${key} appears twice`);
    seen.add(key);
    for (const label of ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]) {
      assert.ok(o.metadata.labels?.[label], `${key} lacks the label ${label}`);
    }
  }
});

test("workload selectors match their pod templates, and each Service selects its own pods only", () => {
  for (const w of [deployment, statefulSet]) {
    const matchLabels = (w["spec"] as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
    assert.ok(selects(matchLabels, podTemplate(w).metadata.labels), `${w.kind} ${w.metadata.name}: selector does not match its pod template labels`);
  }
  const sel = (s: K8sObject) => (s["spec"] as { selector: Record<string, string> }).selector;
  assert.ok(selects(sel(coordinatorService), coordinatorPod.metadata.labels), "the coordinator Service does not select the coordinator pods");
  assert.ok(!selects(sel(coordinatorService), workerPod.metadata.labels), "the coordinator Service also selects worker pods");
  assert.ok(selects(sel(workerService), workerPod.metadata.labels), "the worker Service does not select the worker pods");
  assert.ok(!selects(sel(workerService), coordinatorPod.metadata.labels), "the worker Service also selects the coordinator pod");
  const pdb = only("PodDisruptionBudget");
  const pdbSel = (pdb["spec"] as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
  assert.ok(selects(pdbSel, workerPod.metadata.labels), "the PodDisruptionBudget does not select the worker pods");
  assert.ok(!selects(pdbSel, coordinatorPod.metadata.labels), "the PodDisruptionBudget also selects the coordinator pod");
});

test("the StatefulSet is governed by its headless Service, which serves grpc 50051 and metrics 9090", () => {
  const spec = statefulSet["spec"] as { serviceName: string; podManagementPolicy: string };
  assert.equal(spec.serviceName, workerService.metadata.name);
  assert.equal(spec.podManagementPolicy, "Parallel");
  const svc = workerService["spec"] as { clusterIP: string; ports: Array<{ name: string; port: number; targetPort: string | number }> };
  assert.equal(svc.clusterIP, "None");
  assert.deepEqual(svc.ports.map((p) => [p.name, p.port]), [["grpc", 50051], ["metrics", 9090]]);
});

test("Service ports target named container ports that exist", () => {
  for (const [svc, c] of [[coordinatorService, coordinator], [workerService, worker]] as const) {
    for (const p of (svc["spec"] as { ports: Array<{ name: string; port: number; targetPort: string }> }).ports) {
      assert.equal(typeof p.targetPort, "string", `${svc.metadata.name} port ${p.name}: target a named port`);
      assert.equal(port(c, p.targetPort), p.port, `${svc.metadata.name} port ${p.name} and the container port differ`);
    }
  }
  assert.deepEqual((coordinatorService["spec"] as { ports: Array<{ name: string; port: number }> }).ports.map((p) => [p.name, p.port]), [["grpc", 50051], ["metrics", 9090]]);
});

test("RBAC is least privilege: the coordinator's Role only reads pods, bound to the coordinator's ServiceAccount alone", () => {
  const role = only("Role");
  assert.deepEqual(role["rules"], [{ apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] }]);
  const sa = only("ServiceAccount");
  const binding = only("RoleBinding");
  assert.deepEqual(binding["roleRef"], { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: role.metadata.name });
  assert.deepEqual(binding["subjects"], [{ kind: "ServiceAccount", name: sa.metadata.name, namespace: NAMESPACE }]);
  assert.equal(coordinatorPod.spec.serviceAccountName, sa.metadata.name);
  assert.equal(coordinatorPod.spec.automountServiceAccountToken, true, "the coordinator needs its token for the API");
  assert.equal(workerPod.spec.serviceAccountName, undefined, "workers need no ServiceAccount of their own");
  assert.equal(workerPod.spec.automountServiceAccountToken, false, "workers must not get an API token");
  assert.equal(sa["automountServiceAccountToken"], false, "only pods that ask for it get the coordinator's token");
});

test("the coordinator runs one replica, replaced with Recreate", () => {
  const spec = deployment["spec"] as { replicas: number; strategy: { type: string } };
  assert.equal(spec.replicas, 1);
  assert.equal(spec.strategy.type, "Recreate");
});

test("the coordinator finds workers by the worker pods' labels in its own namespace, on the workers' gRPC port", () => {
  const args = coordinator.args ?? [];
  assert.deepEqual(flagValues(args, "--worker"), [], "no static --worker flags in Kubernetes mode");
  const [selector] = flagValues(args, "--k8s-selector");
  assert.ok(selector, "--k8s-selector missing");
  const parsed = Object.fromEntries(selector.split(",").map((pair) => pair.split("=") as [string, string]));
  const stsSelector = (statefulSet["spec"] as { selector: { matchLabels: Record<string, string> } }).selector.matchLabels;
  assert.deepEqual(parsed, stsSelector, "--k8s-selector must be the worker StatefulSet's selector");
  assert.ok(!selects(parsed, coordinatorPod.metadata.labels), "--k8s-selector must not select the coordinator");
  assert.deepEqual(flagValues(args, "--k8s-worker-port"), [String(port(worker, "grpc"))]);
  assert.deepEqual(flagValues(args, "--k8s-namespace"), ["$(POD_NAMESPACE)"]);
  const ns = coordinator.env?.find((e) => e.name === "POD_NAMESPACE");
  assert.deepEqual(ns?.valueFrom, { fieldRef: { fieldPath: "metadata.namespace" } });
  assert.deepEqual(flagValues(args, "--listen"), [`0.0.0.0:${port(coordinator, "grpc")}`]);
  assert.deepEqual(flagValues(args, "--metrics-port"), [String(port(coordinator, "metrics"))]);
  assert.deepEqual(flagValues(args, "--nats"), [values.nats.url]);
});

test("the coordinator's flags are ones its entry point knows (plus the Kubernetes discovery flags)", () => {
  const source = readFileSync(join(REPO, "services/coordinator/src/main.ts"), "utf8");
  const k8sFlags = new Set(["k8s-namespace", "k8s-selector", "k8s-worker-port", "k8s-statefulset", "k8s-min-replicas", "k8s-max-replicas"]);
  for (const a of coordinator.args ?? []) {
    if (!a.startsWith("--")) continue;
    const name = a.slice(2).split("=")[0]!;
    const known = source.includes(`"${name}":`) || new RegExp(`[{,\\s]${name}:\\s*\\{`).test(source);
    assert.ok(known || k8sFlags.has(name), `coordinator flag --${name} is not an option of services/coordinator/src/main.ts`);
  }
});

test("the worker's flags parse with the worker's own parser, advertising the pod IP", () => {
  const args = worker.args ?? [];
  const env = { POD_IP: "10.1.2.3", POD_NAME: "atvp-atv-prune-worker-0", ATVP_WORKER_MEMORY_BYTES: "17179869184" };
  const expanded = args.map((a) => a.replace(/\$\(([A-Z_]+)\)/g, (_, v: string) => {
    assert.ok(v in env, `worker arg ${a} uses $(${v}), which this test does not know`);
    return env[v as keyof typeof env];
  }));
  const opts = parseWorkerArgs(expanded);
  assert.equal(opts.host, "0.0.0.0");
  assert.equal(opts.port, port(worker, "grpc"));
  assert.equal(opts.advertise, `10.1.2.3:${port(worker, "grpc")}`);
  assert.equal(opts.metricsPort, port(worker, "metrics"));
  assert.equal(opts.device, "auto");
  assert.equal(opts.threads, values.worker.threads);
  assert.equal(opts.id, env.POD_NAME);
  assert.equal(opts.memoryBytes, 17179869184);
  const ip = worker.env?.find((e) => e.name === "POD_IP");
  assert.deepEqual(ip?.valueFrom, { fieldRef: { fieldPath: "status.podIP" } });
  const mem = worker.env?.find((e) => e.name === "ATVP_WORKER_MEMORY_BYTES");
  assert.deepEqual(mem?.valueFrom, { resourceFieldRef: { containerName: worker.name, resource: "limits.memory", divisor: "1" } });
});

test("workers enforce the coordinator's path policy themselves: the same allowed roots, and its work root for work dirs", () => {
  const cargs = coordinator.args ?? [];
  const wargs = worker.args ?? [];
  assert.deepEqual(flagValues(wargs, "--allow-root"), flagValues(cargs, "--allow-root"));
  assert.deepEqual(flagValues(wargs, "--work-root"), flagValues(cargs, "--work-root"));
  const opts = parseWorkerArgs(wargs.map((a) => a.replace(/^\$\(ATVP_WORKER_MEMORY_BYTES\)$/, "1").replace(/\$\([A-Z_]+\)/g, "x")));
  assert.deepEqual(opts.allowedRoots, values.coordinator.allowedRoots.map((r) => `${values.storage.mountPath}/${r}`));
  assert.deepEqual(opts.workRoots, [`${values.storage.mountPath}/${values.coordinator.workRoot}`]);
});

test("by default (no tls.enabled) workers say --insecure out loud, and no token Secret is wired", () => {
  const wargs = worker.args ?? [];
  assert.ok(wargs.includes("--insecure"), "a worker without TLS must be started with --insecure");
  assert.equal(flagValues(wargs, "--tls-cert").length, 0);
  for (const c of [coordinator, worker]) assert.ok(!envNames(c).has("ATVP_TOKEN"), `${c.name}: ATVP_TOKEN without auth.existingSecret`);
});

test("every $(VAR) in a container's args is defined in its env", () => {
  for (const c of [coordinator, worker]) {
    for (const a of c.args ?? []) {
      for (const m of a.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) assert.ok(envNames(c).has(m[1]!), `${c.name}: arg ${a} uses $(${m[1]}) but env has no ${m[1]}`);
    }
  }
});

test("both containers probe /healthz (liveness) on the metrics port and gRPC health (readiness) on the gRPC port", () => {
  for (const c of [coordinator, worker]) {
    assert.deepEqual(c.livenessProbe?.httpGet, { path: "/healthz", port: "metrics" }, `${c.name} liveness`);
    assert.deepEqual((c.readinessProbe as { grpc?: unknown } | undefined)?.grpc, { port: port(c, "grpc") }, `${c.name} readiness`);
  }
});

test("every pod mounts the shared claim at the same path, and job paths lie under it", () => {
  const pvc = only("PersistentVolumeClaim");
  assert.deepEqual((pvc["spec"] as { accessModes: string[] }).accessModes, ["ReadWriteMany"]);
  const mountPaths = new Set<string>();
  for (const pod of [coordinatorPod.spec, workerPod.spec] as PodSpec[]) {
    const vol = pod.volumes?.find((v) => v.persistentVolumeClaim);
    assert.equal(vol?.persistentVolumeClaim?.claimName, pvc.metadata.name);
    const mount = pod.containers[0]!.volumeMounts?.find((m) => m.name === vol!.name);
    assert.ok(mount, `${pod.containers[0]!.name} does not mount the shared claim`);
    mountPaths.add(mount.mountPath);
  }
  assert.deepEqual([...mountPaths], [values.storage.mountPath]);
  const args = coordinator.args ?? [];
  for (const p of [...flagValues(args, "--work-root"), ...flagValues(args, "--allow-root")]) {
    assert.ok(p === values.storage.mountPath || p.startsWith(`${values.storage.mountPath}/`), `${p} is not on the shared volume (${values.storage.mountPath})`);
  }
  assert.equal(flagValues(args, "--work-root").length, 1);
  assert.ok(flagValues(args, "--allow-root").length >= 1);
});

test("pods run as non-root with a read-only root filesystem and a writable /tmp", () => {
  for (const pod of [coordinatorPod.spec, workerPod.spec] as PodSpec[]) {
    const c = pod.containers[0]!;
    assert.equal(pod.securityContext?.["runAsNonRoot"], true, `${c.name}: runAsNonRoot`);
    assert.deepEqual(pod.securityContext?.["seccompProfile"], { type: "RuntimeDefault" }, `${c.name}: seccomp`);
    assert.equal(c.securityContext?.["readOnlyRootFilesystem"], true, `${c.name}: readOnlyRootFilesystem`);
    assert.equal(c.securityContext?.["allowPrivilegeEscalation"], false, `${c.name}: allowPrivilegeEscalation`);
    assert.deepEqual(c.securityContext?.["capabilities"], { drop: ["ALL"] }, `${c.name}: capabilities`);
    const tmp = c.volumeMounts?.find((m) => m.mountPath === "/tmp");
    assert.ok(tmp && pod.volumes?.find((v) => v.name === tmp.name)?.emptyDir, `${c.name}: /tmp must be an emptyDir`);
  }
});

test("workers ask for one GPU and tolerate the nvidia.com/gpu taint", () => {
  assert.equal(worker.resources?.limits?.["nvidia.com/gpu"], 1);
  assert.ok(workerPod.spec.tolerations?.some((t) => t["key"] === "nvidia.com/gpu" && t["effect"] === "NoSchedule" && t["operator"] === "Exists"));
  assert.equal(coordinator.resources?.limits?.["nvidia.com/gpu"], undefined, "the coordinator needs no GPU");
});

test("the plain manifests say what the chart's default values say", () => {
  const image = (v: ComponentValues) => `${v.image.repository}:${chart.appVersion}`;
  assert.equal(coordinator.image, image(values.coordinator));
  assert.equal(worker.image, image(values.worker));
  for (const [c, pod, v] of [[coordinator, coordinatorPod.spec, values.coordinator], [worker, workerPod.spec, values.worker]] as const) {
    assert.equal(c.imagePullPolicy, v.image.pullPolicy, `${c.name} pullPolicy`);
    assert.equal(port(c, "grpc"), v.grpcPort, `${c.name} grpc port`);
    assert.equal(port(c, "metrics"), v.metricsPort, `${c.name} metrics port`);
    assert.deepEqual(c.resources, v.resources, `${c.name} resources`);
    assert.deepEqual(pod.tolerations ?? [], v.tolerations, `${c.name} tolerations`);
    assert.deepEqual(pod.nodeSelector ?? {}, v.nodeSelector, `${c.name} nodeSelector`);
    assert.deepEqual(pod.securityContext, v.podSecurityContext, `${c.name} pod securityContext`);
    assert.deepEqual(c.securityContext, v.securityContext, `${c.name} securityContext`);
    assert.equal(pod.terminationGracePeriodSeconds, v.terminationGracePeriodSeconds, `${c.name} terminationGracePeriodSeconds`);
    const { httpGet: _l, ...liveness } = c.livenessProbe!;
    const { grpc: _r, ...readiness } = c.readinessProbe! as { grpc?: unknown };
    assert.deepEqual(liveness, v.livenessProbe, `${c.name} liveness timing`);
    assert.deepEqual(readiness, v.readinessProbe, `${c.name} readiness timing`);
  }
  const sts = statefulSet["spec"] as { replicas: number; podManagementPolicy: string };
  assert.equal(sts.replicas, values.worker.replicas);
  assert.equal(sts.podManagementPolicy, values.worker.podManagementPolicy);
  assert.deepEqual(flagValues(worker.args ?? [], "--device"), [values.worker.device]);
  assert.deepEqual(flagValues(worker.args ?? [], "--threads"), [String(values.worker.threads)]);
  const args = coordinator.args ?? [];
  assert.deepEqual(flagValues(args, "--work-root"), [`${values.storage.mountPath}/${values.coordinator.workRoot}`]);
  assert.deepEqual(flagValues(args, "--allow-root"), values.coordinator.allowedRoots.map((r) => `${values.storage.mountPath}/${r}`));
  const pvc = only("PersistentVolumeClaim")["spec"] as { accessModes: string[]; resources: { requests: { storage: string } } };
  assert.deepEqual(pvc.accessModes, values.storage.accessModes);
  assert.equal(pvc.resources.requests.storage, values.storage.size);
  assert.equal((only("PodDisruptionBudget")["spec"] as { maxUnavailable: number }).maxUnavailable, values.worker.podDisruptionBudget.maxUnavailable);
});
