/**
 * What a submitted job may touch: a job names files on the coordinator's and workers' disks, so
 * every model, calibration and output path must resolve inside one of the configured allowed
 * roots, after `..` and symbolic links are followed (a link inside a root that points outside is
 * outside). Also the field checks of a submitted JobSpec, as gRPC statuses that name the field.
 */
import { toPruneSpec } from "./jobSpec.js";
import { lstatSync, readFileSync, realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { status } from "@grpc/grpc-js";
import type { JobSpec } from "../gen/atvprune/v1/job_pb.js";
import {
  AtvpError, InvalidArgumentError, readModel, checkCalibKeys, checkNotInput, TensorData,
  resolveSpec, needsCalibration, checkReplicas,
} from "../core/src/index.js";
import { RpcError } from "./status.js";

function errnoOf(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? "error";
}

function realRoot(root: string): string {
  try {
    return realpathSync(resolve(root));
  } catch (err) {
    throw new RpcError(status.FAILED_PRECONDITION, `allowed root ${root} cannot be resolved (${errnoOf(err)}); fix the coordinator's --allow-root`);
  }
}

function isInside(path: string, root: string): boolean {
  const rel = relative(root, path);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${sep}`) && !isAbsolute(rel));
}

/**
 * The real path of `absolute`, or for a path that does not exist yet the real path of its
 * nearest existing ancestor joined with the missing rest (which, coming from a normalized path,
 * holds no `..` and no links).
 */
function realpathOrAncestor(absolute: string, field: string, path: string): { real: string; exists: boolean } {
  const rest: string[] = [];
  let current = absolute;
  for (;;) {
    try {
      const real = realpathSync(current);
      if (rest.length === 0) return { real, exists: true };
      if (!statSync(real).isDirectory()) throw new RpcError(status.INVALID_ARGUMENT, `${field}: ${path}: ${current} is not a directory`);
      return { real: join(real, ...rest.reverse()), exists: false };
    } catch (err) {
      if (err instanceof RpcError) throw err;
      const code = errnoOf(err);
      if (code === "ELOOP") throw new RpcError(status.INVALID_ARGUMENT, `${field}: ${path}: too many levels of symbolic links`);
      if (code === "EACCES") throw new RpcError(status.PERMISSION_DENIED, `${field}: ${path} cannot be read by the coordinator (EACCES)`);
      if (code !== "ENOENT" && code !== "ENOTDIR") throw new RpcError(status.FAILED_PRECONDITION, `${field}: ${path} cannot be resolved (${code})`);
      // A link whose target is missing: where a later mkdir or write would land cannot be checked.
      if (isSymlink(current)) throw new RpcError(status.PERMISSION_DENIED, `${field}: ${path} goes through a dangling symbolic link (${current})`);
      const parent = dirname(current);
      if (parent === current) throw new RpcError(status.FAILED_PRECONDITION, `${field}: ${path} cannot be resolved (no existing ancestor)`);
      rest.push(basename(current));
      current = parent;
    }
  }
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

/**
 * The real, absolute path of `path` (relative paths resolve against the current directory),
 * after checking that it lies inside one of `roots`. Use the returned path, not the given one:
 * it is the one that was checked. The containment check comes before the existence check so a
 * caller cannot probe which files exist outside the roots.
 */
export function resolveAllowedPath(path: string, roots: readonly string[], field: string, opts: { mustExist: boolean }): string {
  if (roots.length === 0) throw new RpcError(status.FAILED_PRECONDITION, "no allowed roots configured");
  if (!path) throw new RpcError(status.INVALID_ARGUMENT, `${field}: is required`);
  if (path.includes("\0")) throw new RpcError(status.INVALID_ARGUMENT, `${field}: contains a NUL byte`);
  const realRoots = roots.map(realRoot);
  const { real, exists } = realpathOrAncestor(resolve(path), field, path);
  if (!realRoots.some((root) => isInside(real, root))) {
    throw new RpcError(status.PERMISSION_DENIED, `${field}: ${path} is outside the allowed roots (${roots.join(", ")})`);
  }
  if (opts.mustExist && !exists) throw new RpcError(status.NOT_FOUND, `${field}: ${path} does not exist`);
  return real;
}

/** The model (must exist), calibration set (must exist, when given) and output directory of a job, checked and made real. */
export function resolveJobPaths<S extends { model: string; calib?: string; out: string }>(spec: S, roots: readonly string[]): S {
  return {
    ...spec,
    model: resolveAllowedPath(spec.model, roots, "spec.model", { mustExist: true }),
    calib: spec.calib ? resolveAllowedPath(spec.calib, roots, "spec.calib", { mustExist: true }) : spec.calib,
    out: resolveAllowedPath(spec.out, roots, "spec.out", { mustExist: false }),
  };
}

/**
 * The .npy files a calibration JSONL names (relative to it, or absolute) must be inside the
 * roots too: otherwise a job could make workers read any file on their storage.
 */
export function checkCalibrationPaths(calib: string, roots: readonly string[]): string[] {
  const text = readFileSync(calib, "utf8");
  const files: string[] = [];
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new RpcError(status.INVALID_ARGUMENT, `spec.calib: ${calib}:${i + 1} is not valid JSON`);
    }
    if (typeof value === "object" && value !== null && !Array.isArray(value)) {
      try {
        checkCalibKeys(value as Record<string, unknown>, `${calib}:${i + 1}`);
      } catch (err) {
        throw new RpcError(status.INVALID_ARGUMENT, `spec.calib: ${(err as Error).message}`);
      }
    }
    const ref = (value as { inputs_embeds?: unknown } | null)?.inputs_embeds;
    if (typeof ref === "string" && ref !== "") {
      files.push(resolveAllowedPath(isAbsolute(ref) ? ref : resolve(dirname(calib), ref), roots, `spec.calib (${calib}:${i + 1} inputs_embeds)`, { mustExist: true }));
    }
  });
  return files;
}

/**
 * The external data files of a model must be inside the roots too, after links are followed:
 * a `model.onnx.data` that links outside would otherwise be read, and the bytes of tensors
 * left unpruned copied into the output. Returns their real paths.
 */
export function checkExternalDataPaths(model: string, roots: readonly string[], field = "spec.model"): string[] {
  let files: string[];
  try {
    files = new TensorData(readModel(model)).externalFiles();
  } catch (err) {
    if (err instanceof AtvpError) throw new RpcError(status.INVALID_ARGUMENT, `${field}: ${err.message}`);
    throw err;
  }
  return files.map((f) => resolveAllowedPath(f, roots, `${field} (external data ${basename(f)})`, { mustExist: true }));
}

/** A work folder (checkpoints, hidden states) of a job, inside the roots; it need not exist yet. */
export function resolveWorkDir(path: string, roots: readonly string[], field = "workDir"): string {
  return resolveAllowedPath(path, roots, field, { mustExist: false });
}

export interface CheckedJobFiles {
  model: string;
  calib: string | undefined;
  out: string;
  /** every file the job reads (real paths): model, external data, calibration set, .npy files */
  inputs: string[];
}

/**
 * Every file a job touches, checked against the roots with realpath: model, its external data,
 * calibration set and its .npy files (unless magnitude), output folder; and the output folder
 * must not be, nor directly hold, one of the inputs (--force would delete it). For the
 * coordinator at submit and for workers before they open anything.
 */
export function checkJobFiles(spec: { model: string; calib?: string; out: string; method: string }, roots: readonly string[]): CheckedJobFiles {
  const paths = resolveJobPaths(spec, roots);
  const inputs = [paths.model, ...checkExternalDataPaths(paths.model, roots)];
  if (paths.calib) {
    inputs.push(paths.calib);
    if (needsCalibration(spec.method)) inputs.push(...checkCalibrationPaths(paths.calib, roots));
  }
  try {
    checkNotInput(paths.out, paths.out, inputs, "spec.out");
  } catch (err) {
    if (err instanceof AtvpError) throw new RpcError(status.FAILED_PRECONDITION, `spec.out: ${err.message}`);
    throw err;
  }
  return { model: paths.model, calib: paths.calib, out: paths.out, inputs };
}

/** Engine field names that differ from the proto's. */
const PROTO_FIELD: Record<string, string> = { magnitudeScope: "magnitude_scope", sparsityProfile: "sparsity_profile", owlLambda: "owl_lambda", owlM: "owl_m", tampMaxSparsity: "tamp_max_sparsity", maskThreads: "mask_threads" };




/**
 * Every field check the engine makes before it opens a file (method, sparsity, pattern, alpha,
 * propagation, nsamples, seed, magnitude_scope, include/exclude, required model/out, calib
 * unless magnitude), as INVALID_ARGUMENT naming `spec.<field>`. Paths are checked separately by
 * resolveAllowedPath.
 */
export function validateJobSpec(spec: JobSpec | undefined): void {
  if (!spec) throw new RpcError(status.INVALID_ARGUMENT, "spec: is required");
  try {
    const resolved = resolveSpec(toPruneSpec(spec), 1);
    checkReplicas(resolved.method, spec.replicas);
  } catch (err) {
    if (!(err instanceof InvalidArgumentError)) throw err;
    const field = PROTO_FIELD[err.subject] ?? err.subject;
    const detail = err.message.startsWith(`${err.subject}: `) ? err.message.slice(err.subject.length + 2) : err.message;
    throw new RpcError(status.INVALID_ARGUMENT, `spec.${field}: ${detail}`);
  }
}
