/** `atvp inspect MODEL`: blocks, linears, shapes, parameter counts and data types. */
import { decoderPath, InvalidArgumentError, typeName, analyzeModel } from "../../../core/src/index.js";
import { parse, str } from "../args.js";

export async function inspectCommand(argv: string[]): Promise<number> {
  // --layout / --dtype pick the decoder of a model folder, as prune does.
  const { values, positionals } = parse(argv, { json: { type: "boolean", default: false }, layout: { type: "string" }, dtype: { type: "string" } }, true);
  if (positionals.length !== 1) throw new InvalidArgumentError("MODEL", "usage: atvp inspect MODEL [--json] (MODEL: a decoder .onnx or a model folder)");
  const a = analyzeModel(decoderPath(positionals[0]!, { layout: str(values, "layout"), dtype: str(values, "dtype") }));
  const describe = (l: { weight: string; node: string; inDim: number; outDim: number; dataType: number; op: string; layout: string }) => ({
    weight: l.weight, node: l.node, op: l.op, shape: [l.inDim, l.outDim], params: l.inDim * l.outDim, dataType: typeName(l.dataType), layout: l.layout,
  });
  const blocks = a.partition.blockLinears.map((linears, b) => ({
    index: b,
    label: a.partition.blockLabels[b],
    params: linears.reduce((s, l) => s + l.inDim * l.outDim, 0),
    boundaryIn: a.plan.stateAfter[b],
    linears: linears.map(describe),
  }));
  const info = {
    model: a.loaded.path,
    mainInput: a.partition.mainInput,
    graphAnalysis: a.partition.method,
    inputs: [...a.index.inputs.keys()],
    blocks,
    excluded: a.partition.outsideLinears.map(describe),
    prunableParams: blocks.reduce((s, b) => s + b.params, 0),
  };
  if (values["json"]) {
    process.stdout.write(JSON.stringify(info, null, 2) + "\n");
    return 0;
  }
  const out: string[] = [];
  out.push(`${info.model}`);
  out.push(`  hidden-state input: ${info.mainInput}; blocks grouped by ${info.graphAnalysis}; graph inputs: ${info.inputs.join(", ")}`);
  for (const b of blocks) {
    out.push(`  block ${b.index} (${b.label}): ${b.linears.length} linears, ${b.params.toLocaleString("en-US")} params`);
    for (const l of b.linears) out.push(`    ${l.weight.padEnd(48)} [${l.shape.join(", ")}] ${l.dataType} ${l.node}`);
  }
  for (const l of info.excluded) out.push(`  excluded (outside blocks): ${l.weight} [${l.shape.join(", ")}] ${l.dataType}`);
  out.push(`  prunable parameters: ${info.prunableParams.toLocaleString("en-US")}`);
  process.stdout.write(out.join("\n") + "\n");
  return 0;
}
