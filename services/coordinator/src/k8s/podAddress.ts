/**
 * Which worker pods may take a shard, and at what gRPC address. A pod counts only once the
 * kubelet says it is Ready (its readiness probe passed) and while it is not being deleted: a
 * terminating pod still runs, but it is about to go and must not get new work.
 */
import type { V1Pod } from "@kubernetes/client-node";

/** The labels the Helm chart puts on worker pods. */
export const DEFAULT_WORKER_SELECTOR = "app.kubernetes.io/name=atv-prune,app.kubernetes.io/component=worker";

/** The container port the worker's gRPC server listens on, when no number is configured. */
export const GRPC_PORT_NAME = "grpc";

export function isReadyPod(pod: V1Pod): boolean {
  if (pod.metadata?.deletionTimestamp) return false;
  if (pod.status?.phase !== "Running" || !pod.status.podIP) return false;
  return pod.status.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;
}

/** `port`, or the pod's container port named "grpc"; undefined when neither is known. */
export function grpcPort(pod: V1Pod, port: number | undefined): number | undefined {
  if (port !== undefined) return port;
  for (const c of pod.spec?.containers ?? []) {
    const p = c.ports?.find((x) => x.name === GRPC_PORT_NAME);
    if (p) return p.containerPort;
  }
  return undefined;
}

/** `podIP:port` (IPv6 in brackets) of a ready pod; undefined for a pod that takes no work. */
export function podAddress(pod: V1Pod, port: number | undefined): string | undefined {
  if (!isReadyPod(pod)) return undefined;
  const p = grpcPort(pod, port);
  if (p === undefined) return undefined;
  const ip = pod.status!.podIP!;
  return ip.includes(":") ? `[${ip}]:${p}` : `${ip}:${p}`;
}
