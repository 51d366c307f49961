/**
 * The credentials of a local cluster, made by `atvp cluster up` in DIR/tls and DIR/token: a CA
 * of its own, a certificate for the coordinator and one for the workers (each usable as server
 * and as client: the coordinator calls workers, workers pull from each other), one for the CLI
 * (client only), and the shared token. Keys and the token are mode 0600 in a 0700 folder; the
 * CA's key is deleted once the certificates are signed, so nobody can mint another one.
 * Certificates are made with openssl (Node's crypto cannot issue X.509 certificates).
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TlsConfig } from "../../rpc/index.js";
import { CliError } from "./cliError.js";
import { findExecutable } from "./localProcesses.js";

export const TLS_DIR = "tls";
/** The DNS name in every service certificate, besides the loopback IP they listen on. */
export const LOCAL_NAME = "localhost";
export const TOKEN_FILE = "token";

export interface KeyPair {
  cert: string;
  key: string;
}

export interface ClusterCredentials {
  /** the cluster CA's certificate (absolute path) */
  ca: string;
  coordinator: KeyPair;
  worker: KeyPair;
  /** the CLI's client certificate */
  client: KeyPair;
  tokenFile: string;
}

const KEY_MODE = 0o600;
const DAYS = "365";
const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

function openssl(bin: string, dir: string, args: string[]): void {
  const r = spawnSync(bin, args, { cwd: dir, encoding: "utf8", timeout: 30_000 });
  if (r.error || r.status !== 0) {
    throw new CliError("CLUSTER", `openssl ${args[0]} failed making the cluster's certificates in ${dir}: ${(r.error?.message ?? r.stderr).trim()}`);
  }
}

/** Serving the loopback addresses `cluster up` binds, and authenticating as a client. */
const NODE_EXTENSIONS = (host: string) => `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:${host},DNS:${LOCAL_NAME}\n`;
const CLIENT_EXTENSIONS = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";

/** The openssl executable, or an error saying how to get one (looked up before anything is made). */
export function findOpenssl(): string {
  const bin = findExecutable("openssl");
  if (!bin) {
    throw new CliError("CLUSTER", "openssl not found in PATH: atvp cluster up makes the cluster's CA and certificates with it; install it (apt-get install -y openssl), or start an unauthenticated cluster with --insecure (debugging only)");
  }
  return bin;
}

/** The subject CN of a cluster certificate: what workers check callers against. */
export function peerName(role: string): string {
  return `atvp-${role}`;
}

/** Replaces DIR/tls and DIR/token with fresh credentials for services bound to `host`. */
export function makeClusterCredentials(dir: string, host: string, bin = findOpenssl()): ClusterCredentials {
  const tls = join(dir, TLS_DIR);
  rmSync(tls, { recursive: true, force: true });
  mkdirSync(tls, { recursive: true, mode: 0o700 });
  chmodSync(tls, 0o700);
  const run = (...args: string[]) => openssl(bin, tls, args);
  run("req", "-x509", ...EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", DAYS, "-subj", "/CN=atvp local cluster CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  const leaf = (name: string, extensions: string): KeyPair => {
    run("req", ...EC, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${peerName(name)}`);
    writeFileSync(join(tls, `${name}.ext`), extensions);
    run("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", `0x${randomBytes(8).toString("hex")}`,
      "-days", DAYS, "-extfile", `${name}.ext`, "-out", `${name}.crt`);
    rmSync(join(tls, `${name}.csr`));
    rmSync(join(tls, `${name}.ext`));
    chmodSync(join(tls, `${name}.key`), KEY_MODE);
    return { cert: join(tls, `${name}.crt`), key: join(tls, `${name}.key`) };
  };
  const credentials: ClusterCredentials = {
    ca: join(tls, "ca.crt"),
    coordinator: leaf("coordinator", NODE_EXTENSIONS(host)),
    worker: leaf("worker", NODE_EXTENSIONS(host)),
    client: leaf("client", CLIENT_EXTENSIONS),
    tokenFile: join(dir, TOKEN_FILE),
  };
  rmSync(join(tls, "ca.key"));
  rmSync(credentials.tokenFile, { force: true });
  writeFileSync(credentials.tokenFile, `${randomBytes(32).toString("base64url")}\n`, { mode: KEY_MODE });
  return credentials;
}

/** Removes what makeClusterCredentials made (an `--insecure` cluster must not look secured). */
export function removeClusterCredentials(dir: string): void {
  rmSync(join(dir, TLS_DIR), { recursive: true, force: true });
  rmSync(join(dir, TOKEN_FILE), { force: true });
}

/**
 * The CLI's TLS settings for a cluster made here; the services listen on a loopback IP, and
 * their certificates also carry the name "localhost", which TLS can check without complaint.
 */
export function clientTls(c: ClusterCredentials): Required<Pick<TlsConfig, "ca" | "cert" | "key" | "serverName">> {
  return { ca: c.ca, cert: c.client.cert, key: c.client.key, serverName: LOCAL_NAME };
}
