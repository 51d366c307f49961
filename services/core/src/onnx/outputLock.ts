/**
 * One process per output folder: a lock file beside the folder (`OUT.lock`, created with O_EXCL)
 * that names the process holding it. A lock whose process is gone (same host, pid not alive)
 * is stale and taken over; a live one refuses the second job with the holder's name.
 */
import { hostname } from "node:os";
import { readFileSync } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { resolve } from "node:path";
import { OutputLockedError } from "../errors.js";
import { fsErrorToTyped } from "../io/fsErrors.js";

export const LOCK_SUFFIX = ".lock";

export interface LockHolder {
  pid: number;
  host: string;
  /** a cluster job id, when the holder is a job */
  job?: string;
  since: string;
}

export interface OutputLock {
  readonly path: string;
  readonly holder: LockHolder;
  release(): Promise<void>;
}

export function lockPathOf(dir: string): string {
  return resolve(dir) + LOCK_SUFFIX;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function readHolder(path: string): LockHolder | undefined {
  try {
    const value = JSON.parse(readFileSync(path, "utf8")) as Partial<LockHolder>;
    if (typeof value.pid !== "number" || typeof value.host !== "string") return undefined;
    return { pid: value.pid, host: value.host, job: value.job, since: String(value.since ?? "") };
  } catch {
    return undefined;
  }
}

export function describeHolder(h: LockHolder): string {
  return `${h.job ? `job ${h.job} (` : ""}pid ${h.pid} on ${h.host}${h.job ? ")" : ""}${h.since ? ` since ${h.since}` : ""}`;
}

/** A lock is stale when its process is known to be gone: same host and the pid is not alive (or is ours, reused). */
function isStale(h: LockHolder | undefined): boolean {
  if (h === undefined) return true; // unreadable or half-written by a process that died mid-write
  if (h.host !== hostname()) return false;
  if (h.pid !== process.pid) return !isAlive(h.pid);
  // Our own pid: a lock written before this process started is an earlier process's (in a
  // container every run may get the same pid).
  const startedAt = Date.now() - process.uptime() * 1000;
  return Date.parse(h.since) < startedAt - 1000;
}

/** The live holder of the folder's lock file, if any (a stale or unreadable lock is no holder). */
export function liveLockHolder(dir: string): LockHolder | undefined {
  const path = lockPathOf(dir);
  const current = readHolder(path);
  return current !== undefined && !isStale(current) ? current : undefined;
}

/**
 * Takes the lock of output folder `dir` for this process. `job` re-takes a lock this job held
 * before (a restarted coordinator resuming it). Throws OutputLockedError naming the holder.
 */
export async function acquireOutputLock(dir: string, job?: string): Promise<OutputLock> {
  const path = lockPathOf(dir);
  const holder: LockHolder = { pid: process.pid, host: hostname(), job, since: new Date().toISOString() };
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const handle = await open(path, "wx");
      try {
        await handle.writeFile(JSON.stringify(holder) + "\n");
        await handle.sync();
      } finally {
        await handle.close();
      }
      let released = false;
      return {
        path, holder,
        async release() {
          if (released) return;
          released = true;
          // Only our own lock: after a takeover (we were declared stale) it is someone else's.
          const now = readHolder(path);
          if (now && now.pid === holder.pid && now.host === holder.host && now.since === holder.since) await rm(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw fsErrorToTyped(err, path);
    }
    const current = readHolder(path);
    const sameJob = job !== undefined && current?.job === job;
    if (!sameJob && !isStale(current)) {
      throw new OutputLockedError(resolve(dir), `is being written by ${describeHolder(current!)} (lock file ${path}); wait for it to finish or choose another --out folder`, describeHolder(current!));
    }
    // Stale, or our own job's: moved aside atomically so two takers cannot both remove it.
    const aside = `${path}.stale-${process.pid}-${attempt}`;
    try {
      await rename(path, aside);
      await rm(aside, { force: true });
    } catch {
      // someone else took it over first: try again
    }
  }
  throw new OutputLockedError(resolve(dir), `lock file ${path} keeps changing hands; another process is taking it over — try again`, "unknown");
}
