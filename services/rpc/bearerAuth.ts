/**
 * Shared-secret authentication for the job API: when a token is configured, every request must
 * carry `authorization: Bearer <token>`. It complements TLS (which authenticates the channel)
 * for deployments where client certificates are impractical, e.g. behind an ingress.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { RpcError } from "./status.js";

const HEADER = "authorization";
const SCHEME = /^bearer\s+(.+)$/i;

export const UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token (authorization metadata)";

/** Hashing both sides first makes the comparison constant-time in the token length as well. */
function sameSecret(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given, "utf8").digest();
  const b = createHash("sha256").update(expected, "utf8").digest();
  return timingSafeEqual(a, b);
}

/**
 * Throws UNAUTHENTICATED unless the call carries the configured token. No token configured
 * (undefined or empty) means authentication is off: the check passes.
 */
export function requireBearer(call: { metadata: grpc.Metadata }, token: string | undefined): void {
  if (!token) return;
  // Every value is compared (no early exit) so a request cannot probe which header was wrong.
  let ok = false;
  for (const value of call.metadata.get(HEADER)) {
    if (typeof value !== "string") continue;
    const match = SCHEME.exec(value.trim());
    if (match && sameSecret(match[1]!, token)) ok = true;
  }
  if (!ok) throw new RpcError(grpc.status.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE);
}

/** Client side: the metadata to send with every call (empty when no token is configured). */
export function bearerMetadata(token: string | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (token) metadata.set(HEADER, `Bearer ${token}`);
  return metadata;
}

/**
 * Client side, for clients whose every call must carry the token (the coordinator's and the
 * workers' WorkerService clients): channel options whose interceptor adds it to each call, so
 * no call site can forget it. Empty when no token is configured.
 */
export function bearerClientOptions(token: string | undefined): grpc.ChannelOptions {
  if (!token) return {};
  const interceptor: grpc.Interceptor = (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set(HEADER, `Bearer ${token}`);
      next(metadata, listener);
    },
  });
  return { interceptors: [interceptor] };
}
