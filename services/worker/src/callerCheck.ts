/**
 * Who may call a worker, for both of its services: a client certificate that answers to one of
 * the accepted names (when names are set) and the shared bearer token (when one is set).
 */
import type { Metadata } from "@grpc/grpc-js";
import type { PeerCertificate } from "node:tls";
import { requireBearer, requirePeerName } from "../../rpc/index.js";

export interface CallerPolicy {
  /** shared token every call must carry (undefined: none asked) */
  token?: string;
  /** names (CN or DNS SAN) a caller's client certificate must answer to (undefined: any from the CA) */
  clientNames?: string[];
}

export type CallerOf = { metadata: Metadata; getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null };

export function checkCaller(call: CallerOf, policy: CallerPolicy): void {
  requirePeerName(call, policy.clientNames);
  requireBearer(call, policy.token);
}
