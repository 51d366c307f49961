/** The human summary of a report.json, printed after a prune. */
import { type PruneReport, methodDefinition } from "../../core/src/index.js";

export function formatSummary(r: PruneReport, out: string): string {
  const lines: string[] = [];
  const shown = methodDefinition(r.method).shownOptions;
  const pct = (x: number) => `${(x * 100).toFixed(2)}%`;
  lines.push(`pruned ${out}: method ${r.method}, pattern ${r.pattern}, target sparsity ${pct(r.sparsity)}${shown.includes("alpha") ? `, alpha ${r.alpha}` : ""}, propagation ${r.propagation}`);
  lines.push(`  ${r.totals.pruned.toLocaleString("en-US")} of ${r.totals.params.toLocaleString("en-US")} weights zeroed (${pct(r.totals.sparsity)}) in ${r.layers.length} linears of ${r.totals.blocks} blocks; ${r.totals.samples} samples, ${r.totals.tokens} tokens; ${r.totals.seconds.toFixed(2)} s (graph grouped by ${r.totals.graphAnalysis})`);
  if (r.blocks.some((b) => b.cosDistAvg !== null)) {
    lines.push("  block        cosDistAvg  visual kept / visual (all samples)  seconds");
    for (const b of r.blocks) {
      const kept = b.k.reduce((a, x) => a + x, 0);
      const vis = b.nVisual.reduce((a, x) => a + x, 0);
      lines.push(`  ${b.label.padEnd(12)} ${(b.cosDistAvg ?? 0).toFixed(6).padStart(10)}  ${`${kept} / ${vis}`.padStart(34)}  ${b.seconds.toFixed(3).padStart(7)}`);
    }
  } else {
    for (const b of r.blocks) lines.push(`  ${b.label.padEnd(12)} ${b.seconds.toFixed(3)} s`);
  }
  return lines.join("\n");
}
