/**
 * System errors (ENOSPC, ENOTDIR, EACCES, ...) met while writing a job's output, as typed
 * OutputPathErrors that name the file and say what to do, instead of raw stack traces.
 */
import { OutputPathError } from "../errors.js";

/** The system error code of `err` (ENOENT, ENOSPC, ...), if it has one. */
export function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

const FS_ERRORS: Record<string, string> = {
  ENOSPC: "no space left on the device",
  EDQUOT: "disk quota exceeded",
  ENOTDIR: "a component of the path is a file, not a folder",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  EISDIR: "is a folder where a file was expected",
  EMFILE: "too many open files",
  EIO: "input/output error",
};

/**
 * A system error (ENOSPC, ENOTDIR, EACCES, ...) while writing the output, as an OutputPathError
 * naming the file; anything else is returned as it is.
 */
export function fsErrorToTyped(err: unknown, fallbackPath: string): unknown {
  const code = errnoOf(err);
  if (code === undefined || !(code in FS_ERRORS)) return err;
  const path = (err as NodeJS.ErrnoException).path ?? fallbackPath;
  const what = code === "ENOSPC" || code === "EDQUOT" ? "free some space or choose another --out folder" : "choose another --out folder or fix its permissions";
  return new OutputPathError(path, `${FS_ERRORS[code]} (${code}); ${what}`, code, { cause: err });
}
