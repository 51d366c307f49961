/**
 * Sizes the worker StatefulSet to the work: up to what a job asks for (never past maxReplicas)
 * before the job is planned, and back to minReplicas when no job runs. It GETs the set first
 * and PATCHes only when spec.replicas differs from the target, so a resize by someone else is
 * seen rather than overwritten blindly; the JSON merge patch names spec.replicas alone, leaving
 * the rest of the object (the template, Helm's fields) as it is.
 */
import { AppsV1Api, PatchStrategy, setHeaderOptions, type KubeConfig } from "@kubernetes/client-node";
import { KubeConfigError, toKubeApiError } from "./errors.js";

export interface StatefulSetScalerOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  minReplicas: number;
  maxReplicas: number;
}

/** Shows up in the object's managedFields: who set the replicas. */
export const FIELD_MANAGER = "atvp-coordinator";

export class StatefulSetScaler {
  private readonly api: AppsV1Api;
  readonly subject: string;

  constructor(private readonly opts: StatefulSetScalerOptions) {
    const { minReplicas: min, maxReplicas: max } = opts;
    if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || min < 0 || max < Math.max(min, 1)) {
      throw new KubeConfigError(`statefulset ${opts.namespace}/${opts.name}`, `replica bounds must be integers with 0 <= min <= max and max >= 1, got min ${min}, max ${max}`);
    }
    this.api = opts.kubeConfig.makeApiClient(AppsV1Api);
    this.subject = `statefulset ${opts.namespace}/${opts.name}`;
  }

  /** spec.replicas as the API server has it now (1 when unset, the API's default). */
  async replicas(): Promise<number> {
    try {
      const set = await this.api.readNamespacedStatefulSet({ name: this.opts.name, namespace: this.opts.namespace });
      return set.spec?.replicas ?? 1;
    } catch (err) {
      throw toKubeApiError(err, this.subject, "get");
    }
  }

  /** The replica count a job asking for `requested` workers should have. */
  target(requested: number): number {
    return Math.min(this.opts.maxReplicas, Math.max(this.opts.minReplicas, requested));
  }

  /** Grows the set to target(requested) if it is smaller; returns its replicas afterwards. */
  async scaleUp(requested: number): Promise<number> {
    const want = this.target(requested);
    const now = await this.replicas();
    if (now >= want) return now;
    await this.patchReplicas(want);
    return want;
  }

  /** Brings the set back to minReplicas (no job runs); returns its replicas afterwards. */
  async scaleDown(): Promise<number> {
    const now = await this.replicas();
    if (now === this.opts.minReplicas) return now;
    await this.patchReplicas(this.opts.minReplicas);
    return this.opts.minReplicas;
  }

  private async patchReplicas(replicas: number): Promise<void> {
    try {
      await this.api.patchNamespacedStatefulSet(
        { name: this.opts.name, namespace: this.opts.namespace, body: { spec: { replicas } }, fieldManager: FIELD_MANAGER },
        setHeaderOptions("Content-Type", PatchStrategy.MergePatch));
    } catch (err) {
      throw toKubeApiError(err, this.subject, `patch spec.replicas to ${replicas}`);
    }
  }
}
