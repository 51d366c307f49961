// Transport security of the gRPC services, over real grpc-js connections on loopback: mutual TLS
// refuses clients without a certificate from the configured CA (and plaintext clients), plain
// server TLS accepts them, and the bearer token is enforced per call.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { JobService, JobState } from "../../services/gen/atvprune/v1/job_pb.js";
import { addService, createClient, type Client } from "../../services/rpc/grpcAdapter.js";
import { channelCredentials, channelOptions, serverCredentials, type TlsConfig } from "../../services/rpc/credentials.js";
import { bearerMetadata, requireBearer, UNAUTHENTICATED_MESSAGE } from "../../services/rpc/bearerAuth.js";
import { RpcError } from "../../services/rpc/status.js";
import { tempDir } from "../support/fixtures.js";
import { TestPki } from "../support/certs.js";

const tmp = tempDir("tls");
const dir = tmp.path;
const file = (name: string) => join(dir, name);

const pki = new TestPki(dir);
const makeCa = (name: string) => pki.ca(name);
const makeLeaf = (name: string, ca: string, extensions: string) => pki.leaf(name, ca, extensions);

/** A JobService whose answers are constants; GetJob enforces the server's bearer token. */
async function startServer(credentials: grpc.ServerCredentials, token?: string): Promise<{ server: grpc.Server; port: number }> {
  const server = new grpc.Server();
  addService(server, JobService, {
    async submitJob() { return { job: { id: "job-1", state: JobState.PENDING } }; },
    async getJob(req, call) {
      requireBearer(call, token);
      return { id: req.id, state: JobState.RUNNING };
    },
    async listJobs() { return { jobs: [] }; },
    async cancelJob(req) { return { id: req.id, state: JobState.CANCELLED }; },
    async watchJob() {},
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", credentials, (err, p) => (err ? reject(err) : resolve(p))));
  return { server, port };
}

const servers: grpc.Server[] = [];
const clients: Client<typeof JobService>[] = [];

function client(address: string, tls: TlsConfig | undefined): Client<typeof JobService> {
  const c = createClient(JobService, address, channelCredentials(tls), channelOptions(tls));
  clients.push(c);
  return c;
}

/** The status a GetJob call ends with (OK = 0), bounded by a deadline so a hung handshake fails the test quickly. */
async function getJobStatus(c: Client<typeof JobService>, metadata?: grpc.Metadata): Promise<{ code: grpc.status; details: string }> {
  try {
    const job = await c.getJob({ id: "j" }, { deadlineMs: 5000, metadata });
    assert.equal(job.state, JobState.RUNNING);
    return { code: grpc.status.OK, details: "" };
  } catch (err) {
    const e = err as grpc.ServiceError;
    assert.equal(typeof e.code, "number", `not a gRPC error: ${String(err)}`);
    return { code: e.code, details: e.details };
  }
}

function assertRefused(r: { code: grpc.status; details: string }, what: string): void {
  // A failed handshake surfaces as UNAVAILABLE in grpc-js; never as a served call.
  assert.equal(r.code, grpc.status.UNAVAILABLE, `${what}: expected UNAVAILABLE, got ${grpc.status[r.code]} ${r.details}`);
}

let mtlsPort = 0;
let tlsPort = 0;

before(async () => {
  makeCa("ca");
  makeCa("other-ca");
  makeLeaf("server", "ca", "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  makeLeaf("elsewhere", "ca", "basicConstraints=CA:FALSE\nsubjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n");
  makeLeaf("client", "ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  makeLeaf("stranger", "other-ca", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n");
  const mtls = await startServer(serverCredentials({ ca: file("ca.crt"), cert: file("server.crt"), key: file("server.key"), requireClientCert: true }));
  const tls = await startServer(serverCredentials({ ca: file("ca.crt"), cert: file("server.crt"), key: file("server.key"), requireClientCert: false }));
  servers.push(mtls.server, tls.server);
  mtlsPort = mtls.port;
  tlsPort = tls.port;
});

after(() => {
  for (const c of clients) c.close();
  for (const s of servers) s.forceShutdown();
  tmp.cleanup();
});

const withClientCert = (): TlsConfig => ({ ca: file("ca.crt"), cert: file("client.crt"), key: file("client.key") });

describe("mutual TLS (requireClientCert)", () => {
  test("a client with a certificate from the CA is served (by IP and by host name)", async () => {
    assert.equal((await getJobStatus(client(`127.0.0.1:${mtlsPort}`, withClientCert()))).code, grpc.status.OK);
    assert.equal((await getJobStatus(client(`localhost:${mtlsPort}`, withClientCert()))).code, grpc.status.OK);
  });

  test("a TLS client without a client certificate is refused", async () => {
    assertRefused(await getJobStatus(client(`127.0.0.1:${mtlsPort}`, { ca: file("ca.crt") })), "no client cert");
  });

  test("a client certificate from another CA is refused", async () => {
    assertRefused(await getJobStatus(client(`127.0.0.1:${mtlsPort}`, { ca: file("ca.crt"), cert: file("stranger.crt"), key: file("stranger.key") })), "foreign client cert");
  });

  test("a plaintext client is refused", async () => {
    assertRefused(await getJobStatus(client(`127.0.0.1:${mtlsPort}`, undefined)), "plaintext");
  });

  test("a client that does not trust the server's CA refuses the server", async () => {
    assertRefused(await getJobStatus(client(`127.0.0.1:${mtlsPort}`, { ca: file("other-ca.crt"), cert: file("client.crt"), key: file("client.key") })), "untrusted server");
  });
});

describe("server-only TLS", () => {
  test("a client without a certificate is served", async () => {
    assert.equal((await getJobStatus(client(`127.0.0.1:${tlsPort}`, { ca: file("ca.crt") }))).code, grpc.status.OK);
  });

  test("a plaintext client is still refused", async () => {
    assertRefused(await getJobStatus(client(`127.0.0.1:${tlsPort}`, undefined)), "plaintext");
  });

  test("a server whose certificate does not name the address is refused, unless the client expects that name", async () => {
    const s = await startServer(serverCredentials({ cert: file("elsewhere.crt"), key: file("elsewhere.key") }));
    servers.push(s.server);
    const refused = await getJobStatus(client(`127.0.0.1:${s.port}`, { ca: file("ca.crt") }));
    assertRefused(refused, "SAN mismatch");
    assert.match(refused.details, /altnames|certificate|hostname/i);
    assert.equal((await getJobStatus(client(`127.0.0.1:${s.port}`, { ca: file("ca.crt"), serverName: "elsewhere.example" }))).code, grpc.status.OK);
  });
});

describe("bearer token", () => {
  const token = "s3cret-token";
  let address = "";

  before(async () => {
    // Plaintext, so the token check is all that stands between a caller and the handler.
    const s = await startServer(grpc.ServerCredentials.createInsecure(), token);
    servers.push(s.server);
    address = `127.0.0.1:${s.port}`;
  });

  test("no token → UNAUTHENTICATED with the documented message", async () => {
    const r = await getJobStatus(client(address, undefined));
    assert.equal(r.code, grpc.status.UNAUTHENTICATED, grpc.status[r.code]);
    assert.equal(r.details, UNAUTHENTICATED_MESSAGE);
  });

  test("a wrong token (same length, other length, other scheme) → UNAUTHENTICATED", async () => {
    const c = client(address, undefined);
    for (const value of ["Bearer s3cret-tokeN", "Bearer s3cret", "Bearer s3cret-token-and-more", `Basic ${token}`, token, "Bearer "]) {
      const metadata = new grpc.Metadata();
      metadata.set("authorization", value);
      assert.equal((await getJobStatus(c, metadata)).code, grpc.status.UNAUTHENTICATED, value);
    }
  });

  test("the right token → OK (scheme is case-insensitive)", async () => {
    const c = client(address, undefined);
    assert.equal((await getJobStatus(c, bearerMetadata(token))).code, grpc.status.OK);
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `bearer ${token}`);
    assert.equal((await getJobStatus(c, metadata)).code, grpc.status.OK);
  });

  test("requireBearer: no token configured lets every call through; bearerMetadata(undefined) is empty", () => {
    requireBearer({ metadata: new grpc.Metadata() }, undefined);
    requireBearer({ metadata: new grpc.Metadata() }, "");
    assert.deepEqual(bearerMetadata(undefined).getMap(), {});
    assert.deepEqual(bearerMetadata("t").getMap(), { authorization: "Bearer t" });
    assert.throws(() => requireBearer({ metadata: new grpc.Metadata() }, "t"), (e: unknown) => e instanceof RpcError && e.code === grpc.status.UNAUTHENTICATED);
  });
});
