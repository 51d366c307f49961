/**
 * Which certificate holders may call a service, beyond "signed by the CA": the cluster CA may
 * also sign certificates for people (the CLI's), and WorkerService is for the coordinator and
 * the workers only. A certificate answers to its subject CN and its DNS subject alternative names.
 */
import type { PeerCertificate } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { RpcError } from "./status.js";

export function certificateNames(cert: PeerCertificate | undefined): string[] {
  if (!cert || Object.keys(cert).length === 0) return [];
  const cn = cert.subject?.CN as string | string[] | undefined;
  const names = cn === undefined ? [] : Array.isArray(cn) ? [...cn] : [cn];
  for (const entry of (cert.subjectaltname ?? "").split(",")) {
    const m = /^\s*DNS:(.+?)\s*$/.exec(entry);
    if (m) names.push(m[1]!);
  }
  return names;
}

/**
 * Throws PERMISSION_DENIED unless the caller's client certificate answers to one of `allowed`.
 * No names configured (undefined or empty) means any certificate the TLS layer accepted.
 */
export function requirePeerName(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }, allowed: readonly string[] | undefined): void {
  if (!allowed || allowed.length === 0) return;
  const names = certificateNames(call.getAuthContext()?.sslPeerCertificate);
  if (!names.some((n) => allowed.includes(n))) {
    throw new RpcError(grpc.status.PERMISSION_DENIED, `client certificate (${names.join(", ") || "none"}) is not one this service accepts (${allowed.join(", ")})`);
  }
}
