/**
 * `atvp gen-model`: a LLaVA-style test decoder and calibration set, generated locally; with
 * --layout, a complete vision-language model folder (see core/src/gen/vlm/vlmFolder.ts).
 */
import { generateModel, generateVlmFolder } from "../../../core/src/index.js";
import { int, parse, required, str } from "../args.js";

export async function genModelCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    layers: { type: "string", default: "2" },
    hidden: { type: "string", default: "64" },
    heads: { type: "string" },
    "kv-heads": { type: "string" },
    intermediate: { type: "string" },
    vocab: { type: "string" },
    fused: { type: "boolean", default: false },
    fp16: { type: "boolean", default: false },
    attention: { type: "string" },
    norm: { type: "string" },
    "no-names": { type: "boolean", default: false },
    samples: { type: "string" },
    "seq-len": { type: "string" },
    "image-tokens": { type: "string" },
    seed: { type: "string" },
    out: { type: "string" },
    force: { type: "boolean", default: false },
    layout: { type: "string" },
  });
  const layout = str(values, "layout");
  if (layout !== undefined) {
    const folder = generateVlmFolder({
      layout, outDir: required(values, "out"), layers: int(values, "layers"), hidden: int(values, "hidden"),
      seed: int(values, "seed"), force: values["force"] === true,
    });
    process.stdout.write(JSON.stringify(folder) + "\n");
    return 0;
  }
  const result = await generateModel({
    outDir: required(values, "out"),
    layers: int(values, "layers")!,
    hidden: int(values, "hidden")!,
    heads: int(values, "heads"),
    kvHeads: int(values, "kv-heads"),
    intermediate: int(values, "intermediate"),
    vocab: int(values, "vocab"),
    fused: values["fused"] === true,
    fp16: values["fp16"] === true,
    attention: str(values, "attention") as "mha" | "gqa" | undefined,
    norm: str(values, "norm") as "rms" | "layer" | undefined,
    nodeNames: values["no-names"] ? "none" : "torch",
    samples: int(values, "samples"),
    seqLen: int(values, "seq-len"),
    imageTokens: int(values, "image-tokens"),
    seed: int(values, "seed"),
    force: values["force"] === true,
  });
  process.stdout.write(JSON.stringify(result) + "\n");
  return 0;
}
