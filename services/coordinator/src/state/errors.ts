/**
 * Errors of the coordinator's state layer (job store, event log, the NATS server it may run).
 * They follow services/core/src/errors.ts: a stable code to switch on (and to map to gRPC
 * statuses), and the subject they are about: a job id, a stream, a bucket, a server address.
 */
import { TypedError } from "../../../core/src/index.js";

export type StateErrorCode =
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "CONFLICT"
  | "UNAVAILABLE"
  | "UNAUTHENTICATED"
  | "DATA_LOSS"
  | "NATS_SERVER";

/** The subject is the job id, bucket, stream or server address the error is about. */
export class StateError extends TypedError<StateErrorCode> {
  constructor(code: StateErrorCode, subject: string, message: string, options?: { cause?: unknown }) {
    super(code, subject, message, options);
  }
}

/** No job with this id in the bucket. */
export class JobNotFoundError extends StateError {
  constructor(jobId: string) {
    super("NOT_FOUND", jobId, "no such job");
  }
}

/** create() of an id that is already taken. */
export class JobExistsError extends StateError {
  constructor(jobId: string) {
    super("ALREADY_EXISTS", jobId, "a job with this id already exists");
  }
}

/** Compare-and-set kept losing to other writers; the caller may retry later. */
export class JobConflictError extends StateError {
  constructor(jobId: string, attempts: number) {
    super("CONFLICT", jobId, `update lost ${attempts} compare-and-set rounds to other writers; retry later`);
  }
}

/** NATS could not be reached and there is no local copy to answer from, or a wait timed out. */
export class StateUnavailableError extends StateError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("UNAVAILABLE", subject, message, options);
  }
}

/** The NATS server refused the credentials (or their absence). */
export class NatsAuthError extends StateError {
  constructor(servers: string, message: string, options?: { cause?: unknown }) {
    super("UNAUTHENTICATED", servers, message, options);
  }
}

/** A local nats-server that is missing, does not start, or does not stop. */
export class NatsServerError extends StateError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("NATS_SERVER", subject, message, options);
  }
}
