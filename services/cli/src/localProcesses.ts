/**
 * The process side of a local cluster: starting services detached (they outlive the CLI) with
 * their output in log files, waiting (bounded) for their one-line ready report, and stopping
 * them by pid, with a check that a pid still belongs to the process we started, since pids in
 * an old cluster.json may have been reused by something else.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { accessSync, closeSync, constants, existsSync, openSync, readdirSync, readFileSync, readSync, fstatSync, statSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { delimiter, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CliError } from "./cliError.js";

/** The line every atv-prune service prints on stdout once it serves. */
export interface ReadyLine {
  ready: true;
  address: string;
  metricsPort: number;
  pid: number;
}

export interface Started {
  name: string;
  child: ChildProcess;
  pid: number;
  log: string;
  /** where this run's output starts in the (appended) log */
  logOffset: number;
}

export function findExecutable(name: string, path = process.env["PATH"] ?? ""): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A port nothing listens on right now (another process may still take it: callers retry). */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (typeof address !== "object" || address === null) throw new Error("could not read a free port");
  return address.port;
}

function logSize(path: string): number {
  return existsSync(path) ? statSync(path).size : 0;
}

/**
 * Spawns `command args` in its own process group (Ctrl-C in the CLI's terminal does not reach
 * it), with stdout and stderr appended to `log`.
 */
export function startDetached(name: string, command: string, args: string[], log: string): Started {
  const logOffset = logSize(log);
  const fd = openSync(log, "a");
  try {
    const child = spawn(command, args, { detached: true, stdio: ["ignore", fd, fd], cwd: process.cwd(), env: process.env });
    // Without a listener a spawn failure (ENOENT) would crash the CLI; waitFor* reports it.
    child.on("error", () => {});
    if (child.pid === undefined) throw new CliError("CLUSTER", `${name}: could not start ${command}; see ${log}`);
    return { name, child, pid: child.pid, log, logOffset };
  } finally {
    closeSync(fd);
  }
}

function readLogFrom(path: string, offset: number): string {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return "";
  }
  try {
    const size = fstatSync(fd).size;
    if (size <= offset) return "";
    const buf = Buffer.alloc(size - offset);
    const n = readSync(fd, buf, 0, buf.length, offset);
    return buf.subarray(0, n).toString("utf8");
  } finally {
    closeSync(fd);
  }
}

export function logTail(s: Started, lines = 15): string {
  const text = readLogFrom(s.log, s.logOffset).trimEnd();
  if (!text) return "(the log is empty)";
  return text.split("\n").slice(-lines).map((l) => `  | ${l}`).join("\n");
}

/** The first complete line that is a ready report; other lines (warnings on stderr) are skipped. */
export function findReadyLine(text: string): ReadyLine | undefined {
  const complete = text.slice(0, text.lastIndexOf("\n") + 1);
  for (const line of complete.split("\n")) {
    const t = line.trim();
    if (!t.startsWith("{")) continue;
    let v: unknown;
    try {
      v = JSON.parse(t);
    } catch {
      continue;
    }
    const o = v as Partial<ReadyLine>;
    if (o && o.ready === true && typeof o.address === "string" && /:\d+$/.test(o.address)) {
      return { ready: true, address: o.address, metricsPort: Number(o.metricsPort ?? 0), pid: Number(o.pid ?? 0) };
    }
  }
  return undefined;
}

interface ExitWatch {
  exited(): string | undefined;
}

function watchExit(child: ChildProcess): ExitWatch {
  let how: string | undefined = child.exitCode !== null ? `exit code ${child.exitCode}` : undefined;
  child.once("exit", (code, signal) => { how = signal ? `signal ${signal}` : `exit code ${code}`; });
  child.once("error", (err) => { how = `spawn error: ${err.message}`; });
  return { exited: () => how };
}

function checkAborted(signal: AbortSignal | undefined, s: Started): void {
  if (signal?.aborted) throw new CliError("INTERRUPTED", `interrupted while waiting for ${s.name} (pid ${s.pid})`);
}

/** Polls the log for the ready line; fails when the process exits first, time runs out or `signal` aborts. */
export async function waitForReadyLine(s: Started, timeoutMs: number, signal?: AbortSignal): Promise<ReadyLine> {
  const exit = watchExit(s.child);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    checkAborted(signal, s);
    const ready = findReadyLine(readLogFrom(s.log, s.logOffset));
    if (ready) return ready;
    const how = exit.exited();
    if (how) throw new CliError("CLUSTER", `${s.name} (pid ${s.pid}) ended (${how}) before it was ready; ${s.log}:\n${logTail(s)}`);
    if (Date.now() > deadline) throw new CliError("CLUSTER", `${s.name} (pid ${s.pid}) did not report ready within ${timeoutMs / 1000} s; ${s.log}:\n${logTail(s)}`);
    await sleep(50);
  }
}

/** True once a NATS server greets a TCP connection with its INFO line. */
function natsGreets(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host });
    const done = (ok: boolean) => { socket.destroy(); resolve(ok); };
    socket.setTimeout(1000, () => done(false));
    socket.once("data", (d) => done(d.toString("utf8").startsWith("INFO ")));
    socket.once("error", () => done(false));
  });
}

export async function waitForNats(s: Started, port: number, host: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  const exit = watchExit(s.child);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    checkAborted(signal, s);
    const how = exit.exited();
    if (how) throw new CliError("CLUSTER", `${s.name} (pid ${s.pid}) ended (${how}) before it accepted connections; ${s.log}:\n${logTail(s)}`);
    if (await natsGreets(port, host)) return;
    if (Date.now() > deadline) throw new CliError("CLUSTER", `${s.name} (pid ${s.pid}) did not accept connections on ${host}:${port} within ${timeoutMs / 1000} s; ${s.log}:\n${logTail(s)}`);
    await sleep(100);
  }
}

/** Alive and not a zombie (a dead child its parent has not reaped yet is as good as gone). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return true;
  }
}

/** The command line of a running process, or undefined when it cannot be read. */
function commandLine(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    if (existsSync("/proc/self")) return undefined;
  }
  // No procfs (macOS): ask ps.
  const r = spawnSync("ps", ["-p", String(pid), "-o", "command="], { encoding: "utf8", timeout: 5000 });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Every running process as pid and argv (procfs; `ps` where there is none, splitting on blanks). */
function processTable(): { pid: number; args: string[] }[] {
  if (existsSync("/proc/self")) {
    const out: { pid: number; args: string[] }[] = [];
    for (const name of readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        out.push({ pid: Number(name), args: readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0").filter((a) => a !== "") });
      } catch {
        // ended while we looked
      }
    }
    return out;
  }
  const r = spawnSync("ps", ["-axo", "pid=,command="], { encoding: "utf8", timeout: 5000 });
  if (r.status !== 0) return [];
  return r.stdout.split("\n").map((l) => l.trim().split(/\s+/)).filter((p) => /^\d+$/.test(p[0] ?? "")).map(([pid, ...args]) => ({ pid: Number(pid), args }));
}

/**
 * Running processes (other than this one) whose command line contains `marker` and has `arg`
 * as one of its arguments: a service restarted by hand has a pid no cluster.json recorded, but
 * the same command line.
 */
export function findProcesses(marker: string, arg: string): number[] {
  return processTable()
    .filter((p) => p.pid !== process.pid && p.args.includes(arg) && p.args.join(" ").includes(marker) && isAlive(p.pid))
    .map((p) => p.pid);
}

export type PidState = "gone" | "ours" | "foreign";

/** Whether `pid` is still the process we started: alive, and its command line contains `marker`. */
export function classifyPid(pid: number, marker: string): PidState {
  if (!isAlive(pid)) return "gone";
  const cmd = commandLine(pid);
  return cmd !== undefined && cmd.includes(marker) ? "ours" : "foreign";
}

export interface StopResult {
  /** ended after SIGTERM */
  terminated: number[];
  /** needed SIGKILL */
  killed: number[];
  /** could not be signalled or survived SIGKILL */
  failed: { pid: number; reason: string }[];
}

function signal(pid: number, sig: NodeJS.Signals): string | undefined {
  try {
    process.kill(pid, sig);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === "ESRCH" ? undefined : `${sig}: ${code ?? (err as Error).message}`;
  }
}

async function waitGone(pids: number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  let left = pids.filter(isAlive);
  while (left.length > 0 && Date.now() < deadline) {
    await sleep(100);
    left = left.filter(isAlive);
  }
  return left;
}

/** SIGTERM, wait up to `graceMs` for a clean exit, then SIGKILL what is left. */
export async function stopPids(pids: number[], graceMs: number): Promise<StopResult> {
  const result: StopResult = { terminated: [], killed: [], failed: [] };
  const signalled: number[] = [];
  for (const pid of pids) {
    const err = signal(pid, "SIGTERM");
    if (err) result.failed.push({ pid, reason: err });
    else signalled.push(pid);
  }
  const stubborn = await waitGone(signalled, graceMs);
  result.terminated.push(...signalled.filter((p) => !stubborn.includes(p)));
  for (const pid of stubborn) {
    const err = signal(pid, "SIGKILL");
    if (err) result.failed.push({ pid, reason: err });
  }
  const survivors = await waitGone(stubborn, 5000);
  result.killed.push(...stubborn.filter((p) => !survivors.includes(p)));
  for (const pid of survivors) if (!result.failed.some((f) => f.pid === pid)) result.failed.push({ pid, reason: "still running after SIGKILL" });
  return result;
}
