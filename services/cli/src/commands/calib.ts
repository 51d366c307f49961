/** `atvp calib`: a calibration set from images and text for a model folder (core/src/calib/build). */
import { buildCalibration, type CalibEvent, InvalidArgumentError } from "../../../core/src/index.js";
import { int, parse, required, str } from "../args.js";

export async function calibCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    "model-dir": { type: "string" },
    prompts: { type: "string" },
    conversations: { type: "string" },
    out: { type: "string" },
    "image-root": { type: "string" },
    nsamples: { type: "string" },
    seed: { type: "string" },
    "max-tokens": { type: "string" },
    device: { type: "string" },
    layout: { type: "string" },
    dtype: { type: "string" },
    force: { type: "boolean", default: false },
  });
  const device = str(values, "device") ?? "cpu";
  if (device !== "cpu" && device !== "cuda" && device !== "auto") throw new InvalidArgumentError("--device", `must be cpu, cuda or auto, got ${JSON.stringify(device)}`);
  const tty = process.stderr.isTTY === true;
  const result = await buildCalibration({
    modelDir: required(values, "model-dir"),
    prompts: str(values, "prompts"),
    conversations: str(values, "conversations"),
    out: required(values, "out"),
    imageRoot: str(values, "image-root"),
    nsamples: int(values, "nsamples"),
    seed: int(values, "seed"),
    maxTokens: int(values, "max-tokens"),
    device,
    layout: str(values, "layout"),
    dtype: str(values, "dtype"),
    force: values["force"] === true,
    onProgress: tty ? bar : (e) => process.stdout.write(JSON.stringify(e) + "\n"),
  });
  if (tty) process.stderr.write(`\n${result.samples} samples, ${result.tokens} tokens: ${result.calibPath}\n`);
  return 0;
}

function bar(e: CalibEvent): void {
  if (e.type !== "sample_done") return;
  const width = 30;
  const filled = Math.round(((e.index + 1) / e.of) * width);
  process.stderr.write(`\r[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${e.index + 1}/${e.of} samples (${e.tokens} tokens, ${e.imageTokens} image)`.padEnd(process.stderr.columns ? process.stderr.columns - 1 : 80));
}
