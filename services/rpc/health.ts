/**
 * The standard gRPC operability services on a server: `grpc.health.v1.Health` (Check and Watch,
 * what Kubernetes `grpc:` probes and load balancers call) from grpc-health-check, and server
 * reflection (v1 and v1alpha, what grpcurl uses) from @grpc/reflection.
 *
 * @grpc/reflection reads descriptors from a proto-loader package definition, but it only needs
 * each entry's serialized FileDescriptorProtos: our services' come from the protobuf-es
 * generated files (so reflection serves exactly what the server speaks), the health service's
 * from its own .proto through proto-loader.
 */
import { createRequire } from "node:module";
import type * as grpc from "@grpc/grpc-js";
import { toBinary } from "@bufbuild/protobuf";
import type { DescFile } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatus } from "grpc-health-check";

export const HEALTH_SERVICE = "grpc.health.v1.Health";

export interface HealthHandle {
  /** Sets the status of the whole server ("") and of each service it was given. */
  setServing(serving: boolean): void;
  /** the status of the whole server */
  readonly serving: boolean;
}

/** The FileDescriptorProtos of `files` and their imports, as reflection reads them. */
function packageDefinitionOf(files: DescFile[]): PackageDefinition {
  const seen = new Map<string, Buffer>();
  const add = (f: DescFile) => {
    if (seen.has(f.proto.name)) return;
    seen.set(f.proto.name, Buffer.from(toBinary(FileDescriptorProtoSchema, f.proto)));
    f.dependencies.forEach(add);
  };
  files.forEach(add);
  // One entry per file: reflection iterates the entries and decodes their fileDescriptorProtos.
  return Object.fromEntries([...seen].map(([name, bin]) => [name, { format: "Protocol Buffer 3 DescriptorProto", type: {}, fileDescriptorProtos: [bin] }])) as unknown as PackageDefinition;
}

let healthDefinition: PackageDefinition | undefined;

/**
 * Adds Health and reflection to `server` for `services` (reflection lists them and the health
 * service). Everything starts NOT_SERVING until setServing(true): a probe must not pass before
 * the process is ready.
 */
export function addHealthAndReflection(server: grpc.Server, services: Array<GenService<GenServiceMethods>>): HealthHandle {
  const names = services.map((s) => (s as unknown as { typeName: string }).typeName);
  const files = services.map((s) => (s as unknown as { file: DescFile }).file);
  const status = (serving: boolean): ServingStatus => (serving ? "SERVING" : "NOT_SERVING");
  const health = new HealthImplementation(Object.fromEntries(["", ...names].map((n) => [n, status(false)])));
  health.addToServer(server);
  healthDefinition ??= loadSync(healthProtoPath, { keepCase: true });
  // Only the services this server implements: worker.proto imports job.proto, whose JobService
  // the worker does not serve.
  new ReflectionService({ ...packageDefinitionOf(files), ...healthDefinition }, { services: [...names, HEALTH_SERVICE] }).addToServer(server);
  let current = false;
  return {
    setServing(serving: boolean) {
      if (serving === current) return;
      current = serving;
      for (const n of ["", ...names]) health.setStatus(n, status(serving));
    },
    get serving() {
      return current;
    },
  };
}

// Test clients of these services load the same .proto files the servers use.
const require = createRequire(import.meta.url);
export const REFLECTION_PROTO = require.resolve("@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto");
export { healthProtoPath as HEALTH_PROTO };
