/**
 * gRPC status codes for errors: handlers throw RpcError (or an AtvpError, mapped by its code),
 * and clients get the grpc-js status with a message that names the field or the thing.
 */
import { status, type ServiceError, Metadata } from "@grpc/grpc-js";
import { AtvpError, TypedError, type AtvpErrorCode } from "../core/src/index.js";

/** A gRPC status and a message that names the field or the thing itself (`spec.out: ...`). */
export class RpcError extends TypedError<status> {
  constructor(code: status, message: string) {
    super(code, "", message);
  }
}

const FROM_ATVP: Record<AtvpErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  ONNX_FORMAT: status.INVALID_ARGUMENT,
  EXTERNAL_DATA: status.FAILED_PRECONDITION,
  UNSUPPORTED_TYPE: status.INVALID_ARGUMENT,
  GRAPH: status.INVALID_ARGUMENT,
  CALIBRATION: status.INVALID_ARGUMENT,
  NUMERIC: status.FAILED_PRECONDITION,
  OUTPUT_EXISTS: status.ALREADY_EXISTS,
  OUTPUT_PATH: status.FAILED_PRECONDITION,
  OUTPUT_LOCKED: status.FAILED_PRECONDITION,
  RUNTIME: status.INTERNAL,
};

/** The grpc-js error object a handler's callback (or stream) takes. */
export function toServiceError(err: unknown): Partial<ServiceError> {
  if (err instanceof RpcError) return { code: err.code, details: err.message, message: err.message, metadata: new Metadata() };
  if (err instanceof AtvpError) return { code: FROM_ATVP[err.code], details: err.message, message: err.message, metadata: new Metadata() };
  const message = err instanceof Error ? err.message : String(err);
  return { code: status.INTERNAL, details: message, message, metadata: new Metadata() };
}

/** True for a grpc-js client error with this status. */
export function hasStatus(err: unknown, code: status): boolean {
  return typeof err === "object" && err !== null && (err as { code?: unknown }).code === code;
}
