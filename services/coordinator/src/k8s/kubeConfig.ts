/**
 * Where the coordinator finds the Kubernetes API: inside a pod, through its service account
 * (token, CA and KUBERNETES_SERVICE_HOST/PORT, as client-go's rest.InClusterConfig); outside,
 * through a kubeconfig file (tests, or a coordinator run next to the cluster). It also settles
 * the namespace: the flag, else the pod's own namespace, else the kubeconfig context's.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { KubeConfig } from "@kubernetes/client-node";
import { KubeConfigError } from "./errors.js";

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

export interface KubeAccessOptions {
  /** a kubeconfig file; when absent the in-cluster service account is used */
  kubeconfig?: string;
  /** the namespace to work in; when absent it comes from the pod or the kubeconfig context */
  namespace?: string;
  /** tests point these at a fake pod filesystem and environment */
  env?: NodeJS.ProcessEnv;
  /** prefix of the service account folder (KubeConfig.loadFromCluster's pathPrefix) */
  pathPrefix?: string;
}

export interface KubeAccess {
  config: KubeConfig;
  namespace: string;
  /** the API server URL, for log lines */
  server: string;
  inCluster: boolean;
}

export function loadKubeAccess(opts: KubeAccessOptions = {}): KubeAccess {
  const config = new KubeConfig();
  let inCluster = false;
  if (opts.kubeconfig !== undefined) {
    if (!existsSync(opts.kubeconfig)) throw new KubeConfigError(opts.kubeconfig, "kubeconfig file not found");
    try {
      config.loadFromFile(opts.kubeconfig);
    } catch (err) {
      throw new KubeConfigError(opts.kubeconfig, `not a usable kubeconfig: ${(err as Error).message}`, { cause: err });
    }
  } else {
    const env = opts.env ?? process.env;
    const saDir = (opts.pathPrefix ?? "") + SERVICE_ACCOUNT_DIR;
    if (!env["KUBERNETES_SERVICE_HOST"] || !env["KUBERNETES_SERVICE_PORT"]) {
      throw new KubeConfigError("in-cluster config", "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not running in a pod?); pass --kubeconfig FILE to use a kubeconfig instead");
    }
    if (!existsSync(join(saDir, "token"))) {
      throw new KubeConfigError(saDir, "no service account token here; mount one (automountServiceAccountToken: true) or pass --kubeconfig FILE");
    }
    config.loadFromCluster(opts.pathPrefix);
    inCluster = true;
  }
  const cluster = config.getCurrentCluster();
  if (!cluster) throw new KubeConfigError(opts.kubeconfig ?? "in-cluster config", "has no current cluster (set current-context)");
  return { config, namespace: resolveNamespace(opts, config, inCluster), server: cluster.server, inCluster };
}

function resolveNamespace(opts: KubeAccessOptions, config: KubeConfig, inCluster: boolean): string {
  if (opts.namespace) return opts.namespace;
  if (inCluster) {
    const file = join((opts.pathPrefix ?? "") + SERVICE_ACCOUNT_DIR, "namespace");
    if (existsSync(file)) {
      const ns = readFileSync(file, "utf8").trim();
      if (ns) return ns;
    }
  }
  const context = config.getContextObject(config.getCurrentContext());
  return context?.namespace || "default";
}
