/**
 * grpc-js has no protobuf-es integration: this maps each method of a generated DescService to a
 * grpc-js MethodDefinition (path /package.Service/Method, toBinary/fromBinary), and gives typed
 * servers (async handlers) and clients (promises and async iterables).
 */
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { toServiceError } from "./status.js";

type Methods<S> = S extends GenService<infer M> ? M : never;
type In<M> = M extends { input: infer I extends DescMessage } ? I : never;
type Out<M> = M extends { output: infer O extends DescMessage } ? O : never;

export type ServerImpl<S extends GenService<GenServiceMethods>> = {
  [K in keyof Methods<S>]: Methods<S>[K] extends { methodKind: "unary" }
    ? (request: MessageShape<In<Methods<S>[K]>>, call: grpc.ServerUnaryCall<MessageShape<In<Methods<S>[K]>>, MessageShape<Out<Methods<S>[K]>>>) => Promise<MessageInitShape<Out<Methods<S>[K]>>>
    : Methods<S>[K] extends { methodKind: "server_streaming" }
      ? (request: MessageShape<In<Methods<S>[K]>>, call: grpc.ServerWritableStream<MessageShape<In<Methods<S>[K]>>, MessageShape<Out<Methods<S>[K]>>>) => Promise<void>
      : never;
};

export type ServerStream<O extends DescMessage> = AsyncIterable<MessageShape<O>> & { cancel(): void };

export type Client<S extends GenService<GenServiceMethods>> = {
  [K in keyof Methods<S>]: Methods<S>[K] extends { methodKind: "unary" }
    ? (request: MessageInitShape<In<Methods<S>[K]>>, options?: CallOptions) => Promise<MessageShape<Out<Methods<S>[K]>>>
    : Methods<S>[K] extends { methodKind: "server_streaming" }
      ? (request: MessageInitShape<In<Methods<S>[K]>>, options?: CallOptions) => ServerStream<Out<Methods<S>[K]>>
      : never;
} & { close(): void; raw: grpc.Client };

export interface CallOptions {
  deadlineMs?: number;
  metadata?: grpc.Metadata;
}

interface AnyMethod {
  name: string;
  localName: string;
  methodKind: string;
  input: DescMessage;
  output: DescMessage;
}

function methodsOf(service: GenService<GenServiceMethods>): AnyMethod[] {
  return (service as unknown as { methods: AnyMethod[] }).methods;
}

function typeName(service: GenService<GenServiceMethods>): string {
  return (service as unknown as { typeName: string }).typeName;
}

export function serviceDefinition(service: GenService<GenServiceMethods>): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of methodsOf(service)) {
    if (m.methodKind !== "unary" && m.methodKind !== "server_streaming") throw new Error(`${m.name}: only unary and server-streaming methods are supported`);
    def[m.localName] = {
      path: `/${typeName(service)}/${m.name}`,
      requestStream: false,
      responseStream: m.methodKind === "server_streaming",
      requestSerialize: (msg: unknown) => Buffer.from(toBinary(m.input, msg as never)),
      requestDeserialize: (buf: Buffer) => fromBinary(m.input, buf),
      responseSerialize: (msg: unknown) => Buffer.from(toBinary(m.output, msg as never)),
      responseDeserialize: (buf: Buffer) => fromBinary(m.output, buf),
    };
  }
  return def as grpc.ServiceDefinition;
}

/** Wraps async handlers as grpc-js handlers: returned values become responses, thrown errors statuses. */
export function addService<S extends GenService<GenServiceMethods>>(server: grpc.Server, service: S, impl: ServerImpl<S>): void {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const m of methodsOf(service)) {
    const handler = (impl as Record<string, (req: unknown, call: unknown) => Promise<unknown>>)[m.localName];
    if (!handler) throw new Error(`no handler for ${m.name}`);
    if (m.methodKind === "unary") {
      handlers[m.localName] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        handler(call.request, call).then(
          (res) => callback(null, create(m.output, res as never)),
          (err: unknown) => callback(toServiceError(err)),
        );
      }) as grpc.handleUnaryCall<unknown, unknown>;
    } else {
      handlers[m.localName] = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
        handler(call.request, call).then(
          () => call.end(),
          // grpc-js ends a server stream with a status only through its 'error' event.
          (err: unknown) => {
            if (!call.cancelled) call.emit("error", toServiceError(err));
          },
        );
      }) as grpc.handleServerStreamingCall<unknown, unknown>;
    }
  }
  server.addService(serviceDefinition(service), handlers);
}

/** Writes one message, waiting for 'drain' when grpc-js's buffer is full (backpressure). */
export async function writeMessage<T>(call: grpc.ServerWritableStream<unknown, T>, message: T): Promise<void> {
  if (call.cancelled) throw new Error("the client cancelled the stream");
  if (call.write(message)) return;
  await new Promise<void>((resolve, reject) => {
    const onDrain = () => { cleanup(); resolve(); };
    const onClose = () => { cleanup(); reject(new Error("the stream closed before it drained")); };
    const cleanup = () => { call.off("drain", onDrain); call.off("close", onClose); call.off("cancelled", onClose); };
    call.on("drain", onDrain);
    call.on("close", onClose);
    call.on("cancelled", onClose);
  });
}

export function createClient<S extends GenService<GenServiceMethods>>(
  service: S, address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions = {},
): Client<S> {
  const Ctor = grpc.makeGenericClientConstructor(serviceDefinition(service), typeName(service));
  const raw = new Ctor(address, credentials, options) as unknown as grpc.Client & Record<string, (...args: unknown[]) => unknown>;
  const client: Record<string, unknown> = { close: () => raw.close(), raw };
  for (const m of methodsOf(service)) {
    const callOpts = (o?: CallOptions): grpc.CallOptions => (o?.deadlineMs ? { deadline: Date.now() + o.deadlineMs } : {});
    if (m.methodKind === "unary") {
      client[m.localName] = (request: never, o?: CallOptions) =>
        new Promise((resolve, reject) => {
          raw[m.localName]!(create(m.input, request), o?.metadata ?? new grpc.Metadata(), callOpts(o), (err: grpc.ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)));
        });
    } else {
      client[m.localName] = (request: never, o?: CallOptions) => {
        // A grpc-js ClientReadableStream is already an async iterable with cancel().
        return raw[m.localName]!(create(m.input, request), o?.metadata ?? new grpc.Metadata(), callOpts(o)) as grpc.ClientReadableStream<unknown>;
      };
    }
  }
  return client as Client<S>;
}
