/** `atvp submit`, `status`, `watch`, `cancel`: cluster jobs through the coordinator's JobService. */
import { resolveSpec, InvalidArgumentError } from "../../../core/src/index.js";
import { int, parse, str, type Options } from "../args.js";
import { CliError } from "../cliError.js";
import { connect, CONNECTION_OPTIONS, isTerminal, resolveTarget, rpc, stateName, toJobSpecMessage, type JobConnection } from "../jobClient.js";
import { followToExit, formatJob, jobJson, liveView, quietView } from "../jobWatch.js";
import { JOB_OPTIONS, jobSpec } from "./prune.js";

const SUBMIT_OPTIONS: Options = {
  ...JOB_OPTIONS,
  ...CONNECTION_OPTIONS,
  workers: { type: "string" },
  replicas: { type: "string" },
  wait: { type: "boolean", default: false },
  watch: { type: "boolean", default: false },
  "keep-work": { type: "boolean", default: false },
  layout: { type: "string" },
  dtype: { type: "string" },
};

/** How long `cancel` waits for the job to reach its final state. */
const CANCEL_WAIT_MS = 60_000;

/** prune flags that configure the process rather than the job: in a cluster the workers own them. */
const WORKER_SETTINGS = ["threads", "device"] as const;

async function withConnection(values: Record<string, unknown>, run: (conn: JobConnection) => Promise<number>, target = resolveTarget(values)): Promise<number> {
  const conn = connect(target, values);
  try {
    return await run(conn);
  } finally {
    conn.close();
  }
}

function jobId(positionals: string[], command: string): string {
  if (positionals.length !== 1 || !positionals[0]) throw new InvalidArgumentError("JOB", `atvp ${command} takes one job id (atvp ${command} JOB), got ${positionals.length}`);
  return positionals[0];
}

export async function submitCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, SUBMIT_OPTIONS);
  for (const flag of WORKER_SETTINGS) {
    if (values[flag] !== undefined) throw new InvalidArgumentError(`--${flag}`, "is a worker setting in a cluster, not a job field: give it to the workers (atvp cluster up --threads T)");
  }
  const spec = jobSpec(values);
  // The coordinator checks the spec too; checking here first fails fast, without a round trip.
  resolveSpec(spec, 1);
  const workers = int(values, "workers") ?? 0;
  if (workers < 0) throw new InvalidArgumentError("--workers", `must be >= 0 (0 = every ready worker), got ${workers}`);
  const replicas = int(values, "replicas") ?? 0;
  if (replicas < 0) throw new InvalidArgumentError("--replicas", `must be >= 0 (0 = the coordinator's planner chooses), got ${replicas}`);
  const target = resolveTarget(values);
  const message = toJobSpecMessage(spec, workers, target.local);
  message.keepWork = values["keep-work"] === true;
  message.replicas = replicas;
  // A model folder's layout and decoder dtype: the coordinator finds the decoder (the folder may
  // be on the cluster's volume, not on this machine).
  message.modelLayout = str(values, "layout") ?? "";
  message.modelDtype = str(values, "dtype") ?? "";
  return withConnection(values, async (conn) => {
    const res = await rpc(conn, "SubmitJob", () => conn.client.submitJob({ spec: message }, conn.call()));
    const id = res.job?.id;
    if (!id) throw new CliError("SUBMIT", `SubmitJob (coordinator ${conn.address}) answered without a job id`);
    process.stdout.write(id + "\n");
    if (values["watch"] === true) return followToExit(conn, id, await liveView(conn, id));
    if (values["wait"] === true) return followToExit(conn, id, quietView);
    return 0;
  }, target);
}

export async function statusCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...CONNECTION_OPTIONS, json: { type: "boolean", default: false } }, true);
  const id = jobId(positionals, "status");
  return withConnection(values, async (conn) => {
    const job = await rpc(conn, `GetJob ${id}`, () => conn.client.getJob({ id }, conn.call()));
    process.stdout.write((values["json"] === true ? JSON.stringify(jobJson(job)) : formatJob(job)) + "\n");
    return 0;
  });
}

export async function watchCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, CONNECTION_OPTIONS, true);
  const id = jobId(positionals, "watch");
  return withConnection(values, async (conn) => {
    // An unknown id fails here, as a plain NOT_FOUND, before any stream is opened.
    await rpc(conn, `GetJob ${id}`, () => conn.client.getJob({ id }, conn.call()));
    return followToExit(conn, id, await liveView(conn, id));
  });
}

export async function cancelCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { ...CONNECTION_OPTIONS, reason: { type: "string" }, json: { type: "boolean", default: false } }, true);
  const id = jobId(positionals, "cancel");
  return withConnection(values, async (conn) => {
    let job = await rpc(conn, `CancelJob ${id}`, () => conn.client.cancelJob({ id, reason: str(values, "reason") ?? "" }, conn.call()));
    // The runner stops its shards before the job is CANCELLED: report the state it ends in.
    const giveUpAt = Date.now() + CANCEL_WAIT_MS;
    while (!isTerminal(job.state)) {
      if (Date.now() >= giveUpAt) throw new CliError("CANCEL", `job ${id} is still ${stateName(job.state)} ${CANCEL_WAIT_MS / 1000} s after it was cancelled; check it with atvp status ${id}`);
      await new Promise((r) => setTimeout(r, 200));
      job = await rpc(conn, `GetJob ${id}`, () => conn.client.getJob({ id }, conn.call()));
    }
    process.stdout.write((values["json"] === true ? JSON.stringify(jobJson(job)) : `${job.id} ${stateName(job.state)}${job.reason ? `: ${job.reason}` : ""}`) + "\n");
    return 0;
  });
}
