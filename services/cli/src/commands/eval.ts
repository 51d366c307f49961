/** `atvp eval`: how far a pruned decoder drifted from the dense one (core/src/eval). */
import { writeFileSync } from "node:fs";
import { evaluate, readPruneReport, renderHtmlReport } from "../../../core/src/index.js";
import { int, parse, required, str } from "../args.js";

export async function evalCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, {
    dense: { type: "string" },
    pruned: { type: "string" },
    calib: { type: "string" },
    json: { type: "boolean", default: false },
    html: { type: "string" },
    threads: { type: "string" },
  });
  const result = await evaluate({ dense: required(values, "dense"), pruned: required(values, "pruned"), calib: required(values, "calib"), threads: int(values, "threads") });
  const html = str(values, "html");
  if (html !== undefined) writeFileSync(html, renderHtmlReport(result, readPruneReport(result.pruned)));
  if (values["json"] === true) {
    process.stdout.write(JSON.stringify(result) + "\n");
  } else {
    const f = (v: number | null) => (v === null ? "n/a" : v.toFixed(4));
    const lines = [
      `kl_mean ${f(result.kl_mean)}  top1_agreement ${f(result.top1_agreement)}  ppl dense ${f(result.ppl_dense)} -> pruned ${f(result.ppl_pruned)}  (${result.samples} samples, ${result.text_positions} text positions)`,
      "  block        rel_err_text  rel_err_visual",
      ...result.blocks.map((b) => `  ${b.label.padEnd(12)} ${f(b.rel_err_text).padStart(12)}  ${f(b.rel_err_visual).padStart(14)}`),
    ];
    if (html !== undefined) lines.push(`html report: ${html}`);
    process.stdout.write(lines.join("\n") + "\n");
  }
  return 0;
}
