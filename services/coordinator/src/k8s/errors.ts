/**
 * Errors of the coordinator's Kubernetes mode. Like the state layer's errors they carry a
 * stable code to switch on and the subject they are about (a kubeconfig file, a namespace and
 * selector, a namespace/StatefulSet), so an operator reading the log knows which RBAC rule or
 * which object to look at.
 */
import { TypedError } from "../../../core/src/index.js";

export type KubeErrorCode =
  /** no usable configuration: not in a pod, or a kubeconfig that does not load */
  | "CONFIG"
  /** the API server answered with an error status, or could not be reached */
  | "API"
  /** the resourceVersion a watch resumed from is too old (HTTP 410 Gone): list again */
  | "GONE";

/** The subject is the kubeconfig file, `namespace/name` or `namespace pods (selector)`. */
export class KubeError extends TypedError<KubeErrorCode> {
  /** HTTP status from the API server, when there was one */
  readonly status: number | undefined;

  constructor(code: KubeErrorCode, subject: string, message: string, options?: { cause?: unknown; status?: number }) {
    super(code, subject, message, options);
    this.status = options?.status;
  }
}

export class KubeConfigError extends KubeError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("CONFIG", subject, message, options);
  }
}

export class KubeApiError extends KubeError {
  constructor(subject: string, message: string, options?: { cause?: unknown; status?: number }) {
    super("API", subject, message, options);
  }
}

/** The watch's resourceVersion was compacted away; the only way on is a fresh LIST. */
export class KubeGoneError extends KubeError {
  constructor(subject: string, message: string) {
    super("GONE", subject, message, { status: 410 });
  }
}

/**
 * Wraps whatever the client threw (ApiException with `code`, a watch error with `statusCode`,
 * a network error) as a KubeApiError for `action` on `subject`, with a hint for the statuses an
 * operator can fix.
 */
export function toKubeApiError(err: unknown, subject: string, action: string): KubeError {
  if (err instanceof KubeError) return err;
  const e = err as { code?: unknown; statusCode?: unknown; message?: string; body?: unknown };
  const status = typeof e.statusCode === "number" ? e.statusCode : typeof e.code === "number" ? e.code : undefined;
  if (status === 410) return new KubeGoneError(subject, `${action}: 410 Gone (resourceVersion too old)`);
  const detail = statusMessage(e.body) ?? e.message ?? String(err);
  const hint = status === 401 ? " (check the service account token or kubeconfig credentials)"
    : status === 403 ? " (check the coordinator's RBAC Role: it needs get/list/watch on pods, and get/patch on statefulsets when scaling)"
      : status === 404 ? " (does the namespace or object exist?)" : "";
  return new KubeApiError(subject, `${action} failed${status ? ` with HTTP ${status}` : ""}: ${detail}${hint}`, { cause: err, status });
}

/** The `message` of a Kubernetes Status body, when the body is one. */
function statusMessage(body: unknown): string | undefined {
  if (typeof body === "string") {
    try {
      return statusMessage(JSON.parse(body));
    } catch {
      return body.length > 0 ? body.slice(0, 300) : undefined;
    }
  }
  const m = (body as { message?: unknown } | undefined)?.message;
  return typeof m === "string" ? m : undefined;
}
