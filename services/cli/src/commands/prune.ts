/** `atvp prune`: one process, no services. */
import {
  pruneModel, type PruneEvent, isModelFolder, pruneModelFolder, type PruneSpec,
  InvalidArgumentError,
} from "../../../core/src/index.js";
import { int, list, num, parse, required, str, type Options } from "../args.js";
import { progressSink } from "../progress.js";
import { formatSummary } from "../summary.js";

/** Job flags shared by `prune` and (later) `submit`. */
export const JOB_OPTIONS: Options = {
  model: { type: "string" },
  calib: { type: "string" },
  out: { type: "string" },
  method: { type: "string", default: "atv" },
  sparsity: { type: "string" },
  pattern: { type: "string", default: "unstructured" },
  alpha: { type: "string" },
  propagation: { type: "string", default: "sequential" },
  nsamples: { type: "string" },
  seed: { type: "string" },
  include: { type: "string", multiple: true },
  exclude: { type: "string", multiple: true },
  "magnitude-scope": { type: "string" },
  "sparsity-profile": { type: "string" },
  "owl-lambda": { type: "string" },
  "owl-m": { type: "string" },
  "tamp-max-sparsity": { type: "string" },
  threads: { type: "string" },
  "mask-threads": { type: "string" },
  stats: { type: "string" },
  device: { type: "string" },
  force: { type: "boolean", default: false },
};

export function jobSpec(values: Record<string, unknown>): PruneSpec {
  // Defaults (sparsity 0.5, ...) are the engine's (pruneSpec.ts), the same for every client.
  const pattern = str(values, "pattern") ?? "unstructured";
  const sparsity = num(values, "sparsity");
  const scope = str(values, "magnitude-scope");
  if (scope !== undefined && scope !== "matrix" && scope !== "column") throw new InvalidArgumentError("--magnitude-scope", "must be matrix or column");
  return {
    model: required(values, "model"),
    calib: str(values, "calib"),
    out: required(values, "out"),
    method: str(values, "method") as PruneSpec["method"],
    sparsity,
    pattern,
    alpha: num(values, "alpha"),
    propagation: str(values, "propagation") as PruneSpec["propagation"],
    nsamples: int(values, "nsamples"),
    seed: int(values, "seed"),
    include: list(values, "include"),
    exclude: list(values, "exclude"),
    magnitudeScope: scope as PruneSpec["magnitudeScope"],
    sparsityProfile: str(values, "sparsity-profile"),
    owlLambda: num(values, "owl-lambda"),
    owlM: num(values, "owl-m"),
    tampMaxSparsity: num(values, "tamp-max-sparsity"),
    threads: int(values, "threads"),
    maskThreads: int(values, "mask-threads"),
    stats: str(values, "stats") as PruneSpec["stats"],
    device: str(values, "device") as PruneSpec["device"],
    force: values["force"] === true,
  };
}

export async function pruneCommand(argv: string[]): Promise<number> {
  // --dtype / --layout pick the decoder of a model folder (--model DIR).
  const { values } = parse(argv, { ...JOB_OPTIONS, dtype: { type: "string" }, layout: { type: "string" } });
  const spec = jobSpec(values);
  const sink = progressSink();
  const options = { onEvent: (e: PruneEvent) => sink.event(e), warn: (m: string) => process.stderr.write(m + "\n") };
  const report = isModelFolder(spec.model)
    ? await pruneModelFolder(spec, { ...options, dtype: str(values, "dtype"), layout: str(values, "layout") })
    : await pruneModel(spec, options);
  sink.done();
  const summary = formatSummary(report, spec.out);
  (process.stdout.isTTY ? process.stdout : process.stderr).write(summary + "\n");
  return 0;
}
