/**
 * The output folder of a pruning job and the names of what we write there.
 *
 * A job refuses to write into a folder that already holds something unless --force is given,
 * and --force removes only our own files: pointing --out at the wrong folder must never cost
 * the user anything else. Every check (where the folder is, whether it can be written, whether
 * it is or holds one of the job's inputs) runs before the first file is removed, and a job that
 * fails removes the folders it created.
 */
import { constants, realpathSync } from "node:fs";
import { access, mkdir, readdir, rm, rmdir, stat, statfs } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { OutputExistsError, OutputPathError } from "../errors.js";
import { errnoOf, fsErrorToTyped } from "../io/fsErrors.js";
import { acquireOutputLock, type OutputLock } from "./outputLock.js";

export const MODEL_FILE = "model.onnx";
export const DATA_FILE = "model.onnx.data";
export const REPORT_FILE = "report.json";
/** Suffix of a file still being written; renamed to its final name once complete. */
export const PARTIAL_SUFFIX = ".partial";

const OUR_FILES = [MODEL_FILE, DATA_FILE, REPORT_FILE].flatMap((f) => [f, f + PARTIAL_SUFFIX]);

/** Kernel file systems where a write is a command to the kernel, never a file (statfs magic). */
const SPECIAL_FS = new Map<number, string>([[0x9fa0, "proc"], [0x62656572, "sysfs"], [0x1cd1, "devpts"], [0x74726163, "tracefs"], [0xcafe4a11, "bpf"], [0x27e0eb, "cgroup"], [0x63677270, "cgroup2"], [0x64626720, "debugfs"], [0x73636673, "securityfs"]]);
const SPECIAL_ROOTS = ["/proc", "/sys", "/dev"];

export interface PreparedOutput {
  /** the absolute output folder */
  dir: string;
  /** the topmost folder this call created (undefined when the output folder existed) */
  created: string | undefined;
  /** the lock file held on the folder, when one was asked for */
  lock?: OutputLock;
}

export interface PrepareOptions {
  /** every file the job reads (model, external data, calibration set, .npy files) */
  inputs?: readonly string[];
  /** take the folder's lock file (for this job id, when given) before anything is removed */
  lock?: { job?: string };
}

/** The nearest existing ancestor of `abs` (or `abs` itself), refusing one that is not a folder. */
async function existingAncestor(abs: string, flag: string): Promise<string> {
  for (let current = abs; ; current = dirname(current)) {
    let st;
    try {
      st = await stat(current);
    } catch (err) {
      const code = errnoOf(err);
      if (code === "ENOENT" && dirname(current) !== current) continue;
      if (code === "ENOTDIR") continue; // a component above is a file: found on the way up
      throw new OutputPathError(abs, `${flag} cannot be checked: ${current}: ${code ?? String(err)}`, code, { cause: err });
    }
    if (st.isDirectory()) return current;
    if (current === abs) throw new OutputExistsError(abs, `exists and is not a directory; choose another ${flag} folder`);
    throw new OutputPathError(abs, `${current} ${st.isFile() ? "is a file" : "is a device or other special file"}, not a folder, so nothing can be created under it (ENOTDIR); choose another ${flag} folder`, "ENOTDIR");
  }
}

/**
 * Where the output would be written must be an ordinary, writable folder: found before any
 * work starts (writing under /proc or below a file otherwise fails, or hangs, much later).
 * Returns the real path the folder has or will have.
 */
export async function checkOutputLocation(dir: string, flag = "--out"): Promise<string> {
  const abs = resolve(dir);
  const ancestor = await existingAncestor(abs, flag);
  const real = realpathSync(ancestor);
  // /dev/shm is an ordinary tmpfs folder; the rest of /dev holds devices.
  const ordinary = real === "/dev/shm" || real.startsWith("/dev/shm/");
  const special = ordinary ? undefined : SPECIAL_ROOTS.find((r) => real === r || real.startsWith(r + "/"));
  let fsName: string | undefined;
  try {
    fsName = SPECIAL_FS.get(Number((await statfs(real)).type));
  } catch {
    // statfs is not everywhere; the path prefixes still apply
  }
  if (special !== undefined || fsName !== undefined) {
    throw new OutputPathError(abs, `is on the special file system ${fsName ?? special} (${real}), not a folder for files; choose another ${flag} folder`);
  }
  try {
    await access(real, constants.W_OK | constants.X_OK);
  } catch (err) {
    const code = errnoOf(err);
    throw new OutputPathError(abs, `${real} is not writable by this process (${code}); choose another ${flag} folder or fix its permissions`, code, { cause: err });
  }
  return ancestor === abs ? real : join(real, abs.slice(ancestor.length + (ancestor.endsWith("/") ? 0 : 1)));
}

function realOrSelf(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return resolve(path);
  }
}

/**
 * Refuses an output folder that is one of the job's inputs or holds one directly (where our
 * files go): --force would delete it, and the job would overwrite what it reads.
 */
export function checkNotInput(dir: string, realDir: string, inputs: readonly string[], flag = "--out"): void {
  const outs = new Set([resolve(dir), realDir]);
  for (const input of inputs) {
    for (const path of new Set([resolve(input), realOrSelf(input)])) {
      if (outs.has(path)) throw new OutputPathError(resolve(dir), `is an input of the job (${input}); choose another ${flag} folder`);
      if (outs.has(dirname(path))) {
        throw new OutputPathError(resolve(dir), `holds an input of the job (${input === path ? input : `${input} -> ${path}`}); writing there could destroy it, so it is refused even with --force — choose another ${flag} folder`);
      }
    }
  }
}

/**
 * Makes `dir` ready for a new output: checks it (location, writability, inputs) and takes its
 * lock before anything is removed, then creates it or, with --force, removes our own files.
 */
export async function prepareOutputDir(dir: string, force: boolean, options: PrepareOptions | readonly string[] = {}): Promise<PreparedOutput> {
  const opts: PrepareOptions = Array.isArray(options) ? { inputs: options } : (options as PrepareOptions);
  const abs = resolve(dir);
  const real = await checkOutputLocation(abs);
  checkNotInput(abs, real, opts.inputs ?? []);
  const prepared: PreparedOutput = { dir: abs, created: undefined };
  try {
    // The parent first: the lock file lives beside the output folder.
    prepared.created = await mkdir(dirname(abs), { recursive: true }).catch((err: unknown) => { throw fsErrorToTyped(err, abs); });
    if (opts.lock) prepared.lock = await acquireOutputLock(abs, opts.lock.job);
    let entries: string[] | undefined;
    try {
      entries = await readdir(abs);
    } catch (err) {
      if (errnoOf(err) !== "ENOENT") throw fsErrorToTyped(err, abs);
    }
    if (entries === undefined) {
      await mkdir(abs).catch((err: unknown) => { throw fsErrorToTyped(err, abs); });
      prepared.created ??= abs;
    } else if (entries.length > 0) {
      if (!force) {
        throw new OutputExistsError(
          abs,
          `output folder is not empty (${entries.length} entries, e.g. ${entries.slice(0, 3).join(", ")}); use --force to overwrite or choose another --out folder`,
        );
      }
      await Promise.all(OUR_FILES.map((f) => rm(join(abs, f), { force: true })));
    }
    return prepared;
  } catch (err) {
    await releaseOutput(prepared);
    throw err;
  }
}

/**
 * After a job: releases the lock and, when the job failed (`failed`), removes the folders
 * prepareOutputDir created, deepest first, as long as they are empty (the job's own files are
 * removed before; anything someone else put there stays).
 */
export async function releaseOutput(prepared: PreparedOutput | undefined, failed = true): Promise<void> {
  await prepared?.lock?.release().catch(() => {});
  if (failed) await removeCreatedDirs(prepared);
}

/** The folders prepareOutputDir created, deepest first, while they are empty. */
async function removeCreatedDirs(prepared: PreparedOutput | undefined): Promise<void> {
  if (!prepared?.created) return;
  for (let current = prepared.dir; ; current = dirname(current)) {
    try {
      await rmdir(current);
    } catch {
      return;
    }
    if (current === prepared.created || dirname(current) === current) return;
  }
}
