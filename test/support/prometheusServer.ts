// A real Prometheus (Debian's package) for tests: on 127.0.0.1, its own data dir, a short scrape
// interval, static targets; queried through its HTTP API.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";

export const PROMETHEUS = process.env["PROMETHEUS"] ?? "prometheus";
export const PROMTOOL = process.env["PROMTOOL"] ?? "promtool";

/** Why a test needing `binary` cannot run, or undefined when it is on PATH. */
export function missingBinary(binary: string): string | undefined {
  const r = spawnSync(binary, ["--version"], { encoding: "utf8" });
  return r.error ? `${binary} not found (install Debian's prometheus package: make system-deps)` : undefined;
}

export type Sample = { metric: Record<string, string>; value: [number, string] };

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

export class PrometheusServer {
  private constructor(private readonly child: ChildProcess, readonly url: string, private readonly log: string[]) {}

  /** Starts Prometheus scraping `jobs` (job name -> host:port targets) every second. */
  static async start(dir: string, jobs: Record<string, string[]>): Promise<PrometheusServer> {
    mkdirSync(dir, { recursive: true });
    const config = join(dir, "prometheus.yml");
    writeFileSync(config, JSON.stringify({
      global: { scrape_interval: "1s", scrape_timeout: "900ms", evaluation_interval: "1s" },
      scrape_configs: Object.entries(jobs).map(([job, targets]) => ({ job_name: job, static_configs: [{ targets }] })),
    }));
    const port = await freePort();
    const log: string[] = [];
    const child = spawn(PROMETHEUS, [
      `--config.file=${config}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`,
    ], { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr!.on("data", (d: Buffer) => log.push(d.toString()));
    const p = new PrometheusServer(child, `http://127.0.0.1:${port}`, log);
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`prometheus exited ${child.exitCode}: ${log.join("")}`);
      try {
        if ((await fetch(`${p.url}/-/ready`)).ok) return p;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`prometheus did not become ready: ${log.join("")}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** An instant query (at `time`, Unix seconds, when given); throws on a query error. */
  async query(expr: string, time?: number): Promise<Sample[]> {
    const params = new URLSearchParams({ query: expr });
    if (time !== undefined) params.set("time", String(time));
    const res = await fetch(`${this.url}/api/v1/query?${params}`);
    const body = await res.json() as { status: string; error?: string; data?: { resultType: string; result: Sample[] } };
    if (body.status !== "success") throw new Error(`query ${expr}: ${body.error}`);
    if (body.data!.resultType !== "vector") throw new Error(`query ${expr}: a ${body.data!.resultType}, not a vector`);
    return body.data!.result;
  }

  /** The raw samples of a range selector (`metric[1m]`) at `time`: [unix seconds, value] pairs. */
  async rangeSamples(selector: string, time: number): Promise<Array<[number, number]>> {
    const params = new URLSearchParams({ query: selector, time: String(time) });
    const res = await fetch(`${this.url}/api/v1/query?${params}`);
    const body = await res.json() as { status: string; error?: string; data?: { resultType: string; result: Array<{ values: Array<[number, string]> }> } };
    if (body.status !== "success") throw new Error(`query ${selector}: ${body.error}`);
    if (body.data!.resultType !== "matrix" || body.data!.result.length !== 1) throw new Error(`query ${selector}: expected one series, got ${JSON.stringify(body.data)}`);
    return body.data!.result[0]!.values.map(([t, v]) => [t, Number(v)]);
  }

  /** The single value of a query that must return exactly one series. */
  async scalar(expr: string, time?: number): Promise<number> {
    const r = await this.query(expr, time);
    if (r.length !== 1) throw new Error(`query ${expr}: ${r.length} series, expected 1: ${JSON.stringify(r)}`);
    return Number(r[0]!.value[1]);
  }

  /** Polls (bounded) until `check` accepts the query's result. */
  async waitFor(expr: string, check: (r: Sample[]) => boolean, timeoutMs = 60_000): Promise<Sample[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.query(expr);
      if (check(r)) return r;
      if (Date.now() > deadline) throw new Error(`query ${expr} still gives ${JSON.stringify(r)} after ${timeoutMs} ms`);
      await new Promise((res) => setTimeout(res, 250));
    }
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      this.child.once("exit", () => resolve());
      this.child.kill("SIGTERM");
    });
  }
}
