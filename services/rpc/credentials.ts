/**
 * TLS for every gRPC connection: certificate paths come from configuration; with a CA and
 * `requireClientCert` the server demands client certificates (mutual TLS). No TLS config means
 * plaintext, which is only meant for loopback development.
 */
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { InvalidArgumentError } from "../core/src/index.js";

export interface TlsConfig {
  /** CA bundle that signed the peer's certificate (PEM) */
  ca?: string;
  /** this side's certificate chain (PEM) */
  cert?: string;
  /** this side's private key (PEM) */
  key?: string;
  /** server side: refuse clients without a certificate signed by `ca` */
  requireClientCert?: boolean;
  /** client side: expected server name when it differs from the address host */
  serverName?: string;
}

function read(path: string | undefined, field: string): Buffer | null {
  if (!path) return null;
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InvalidArgumentError(field, `cannot read ${path} (${(err as Error).message})`);
  }
}

export function serverCredentials(tls: TlsConfig | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const cert = read(tls.cert, "tls.cert");
  const key = read(tls.key, "tls.key");
  if (!cert || !key) throw new InvalidArgumentError("tls", "a TLS server needs both tls.cert and tls.key");
  const ca = read(tls.ca, "tls.ca");
  if (tls.requireClientCert && !ca) throw new InvalidArgumentError("tls.ca", "mutual TLS needs the CA that signs client certificates");
  return grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: cert }], tls.requireClientCert ?? false);
}

export function channelCredentials(tls: TlsConfig | undefined): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(read(tls.ca, "tls.ca"), read(tls.key, "tls.key"), read(tls.cert, "tls.cert"));
}

export function channelOptions(tls: TlsConfig | undefined, extra: grpc.ChannelOptions = {}): grpc.ChannelOptions {
  return tls?.serverName ? { "grpc.ssl_target_name_override": tls.serverName, ...extra } : extra;
}

/** Message limit: a little above the ~1 MiB chunks the data plane streams. */
export const MAX_MESSAGE_BYTES = 1536 * 1024;

export const GRPC_OPTIONS: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
};
