/**
 * Typed errors: every failure a user can cause carries a stable code (to switch on, and to map
 * to gRPC statuses later) and the name of the thing that was wrong (file, tensor, layer, line).
 */
export type AtvpErrorCode =
  | "INVALID_ARGUMENT"
  | "ONNX_FORMAT"
  | "EXTERNAL_DATA"
  | "UNSUPPORTED_TYPE"
  | "GRAPH"
  | "CALIBRATION"
  | "NUMERIC"
  | "OUTPUT_EXISTS"
  | "OUTPUT_PATH"
  | "OUTPUT_LOCKED"
  | "RUNTIME";

/**
 * The one base of every typed error of the services (engine, worker, coordinator state and
 * Kubernetes, gRPC statuses, CLI): a code to switch on, and the subject the error is about
 * (empty when the message names it itself), prefixed to the message.
 */
export class TypedError<C extends string | number = string | number> extends Error {
  readonly code: C;
  /** The file, tensor, layer, job id, flag or address the error is about ("" if none). */
  readonly subject: string;

  constructor(code: C, subject: string, message: string, options?: { cause?: unknown }) {
    super(subject ? `${subject}: ${message}` : message, options);
    this.code = code;
    this.subject = subject;
    this.name = new.target.name;
  }
}

export class AtvpError extends TypedError<AtvpErrorCode> {
  constructor(code: AtvpErrorCode, subject: string, message: string, options?: { cause?: unknown }) {
    super(code, subject, message, options);
  }
}

/** A bad option or argument (sparsity, pattern, method, N:M shape, ...). */
export class InvalidArgumentError extends AtvpError {
  constructor(subject: string, message: string) {
    super("INVALID_ARGUMENT", subject, message);
  }
}

/** Not an ONNX file, a truncated one, or a model that does not parse. */
export class OnnxFormatError extends AtvpError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("ONNX_FORMAT", subject, message, options);
  }
}

/** An external-data file that is missing, shorter than the model says, or escapes the model folder. */
export class ExternalDataError extends AtvpError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("EXTERNAL_DATA", subject, message, options);
  }
}

/** A weight or activation in a data type the engine does not handle. */
export class UnsupportedTypeError extends AtvpError {
  constructor(subject: string, message: string) {
    super("UNSUPPORTED_TYPE", subject, message);
  }
}

/** A graph the analysis cannot split into decoder blocks, or a block that cannot be cut. */
export class GraphError extends AtvpError {
  constructor(subject: string, message: string) {
    super("GRAPH", subject, message);
  }
}

/** A calibration file or sample that is malformed or does not fit the model. */
export class CalibrationError extends AtvpError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("CALIBRATION", subject, message, options);
  }
}

/** NaN or Inf where the algorithm needs finite numbers. */
export class NumericError extends AtvpError {
  constructor(subject: string, message: string) {
    super("NUMERIC", subject, message);
  }
}

/** The output directory exists and is not empty (and --force was not given). */
export class OutputExistsError extends AtvpError {
  constructor(subject: string, message: string) {
    super("OUTPUT_EXISTS", subject, message);
  }
}

/**
 * The output folder cannot be written: under a file (ENOTDIR), on a special file system
 * (/proc, /sys, /dev), read-only or not ours (EACCES, EROFS), full (ENOSPC), or it is or holds
 * an input of the job. `errno` is the system error code where there was one.
 */
export class OutputPathError extends AtvpError {
  constructor(subject: string, message: string, readonly errno?: string, options?: { cause?: unknown }) {
    super("OUTPUT_PATH", subject, message, options);
  }
}

/** Another job or process is writing this output folder (its lease or lock file names it). */
export class OutputLockedError extends AtvpError {
  constructor(subject: string, message: string, readonly holder: string) {
    super("OUTPUT_LOCKED", subject, message);
  }
}

/** onnxruntime failed to load or run a (sub)graph. */
export class RuntimeError extends AtvpError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("RUNTIME", subject, message, options);
  }
}
