/**
 * Typed errors of the worker. Each names the job and the block, sample or file it is about, and
 * keeps a code that maps to a gRPC status (services/rpc/status.ts), so the coordinator can tell a
 * bad input (rerunning cannot help) from a lost worker (rerun the shard elsewhere).
 */
import { AtvpError, type AtvpErrorCode } from "../../core/src/index.js";
import { RpcError } from "../../rpc/index.js";

/** A failure while running a block of a shard; keeps the cause's code and with it the status. */
export class ShardError extends AtvpError {
  constructor(code: AtvpErrorCode, subject: string, message: string, options?: { cause?: unknown }) {
    super(code, subject, message, options);
  }
}

/** A checkpoint (states file or block record) that is missing, truncated or malformed. */
export class CheckpointError extends AtvpError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("EXTERNAL_DATA", subject, message, options);
  }
}

/** A StateChunk stream that breaks the protocol (out of order, wrong sizes, unknown type). */
export class StateStreamError extends AtvpError {
  constructor(subject: string, message: string) {
    super("INVALID_ARGUMENT", subject, message);
  }
}

/**
 * Records exchanged between the replicas of a stage (a peer's stream or its file in the work
 * dir) that are not what the exchange needs: the wrong samples, a malformed file, vectors that
 * do not fit (for instance a file left by a run of the job planned with another replica count).
 */
export class ExchangeError extends AtvpError {
  constructor(subject: string, message: string, options?: { cause?: unknown }) {
    super("EXTERNAL_DATA", subject, message, options);
  }
}

/**
 * Prefixes the job and block to an error raised inside a block, keeping its code; errors that
 * are not ours (file system, bugs) become RUNTIME (gRPC INTERNAL), which the coordinator retries.
 */
export function inBlock(err: unknown, job: string, block: number, label: string): Error {
  return inShard(err, `job ${job}, block ${block} (${label})`);
}

/** The same for errors raised while preparing a shard (spec, model, calibration set). */
export function inShard(err: unknown, where: string): Error {
  if (err instanceof RpcError) return err;
  if (err instanceof AtvpError) return new ShardError(err.code, where, err.message, { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  return new ShardError("RUNTIME", where, message, { cause: err });
}
