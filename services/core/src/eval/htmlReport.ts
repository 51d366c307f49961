/**
 * `atvp eval --html`: one self-contained page (no network, no external script): the summary
 * numbers, per-block relative errors (text vs visual), ATV's cosDistAvg and k per block and the
 * per-linear sparsity from the pruned model's report.json. The data is embedded as JSON and
 * drawn into SVG by an inline script, which marks `body[data-rendered]` with the number of
 * plots it drew (4 with a report.json) (what the browser test checks).
 */
import type { PruneReport } from "../pipeline/report.js";
import type { EvalResult } from "./evaluate.js";

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

const fmt = (v: number | null, digits = 4) => (v === null ? "n/a" : Number.isFinite(v) ? v.toPrecision(digits) : String(v));

export function renderHtmlReport(result: EvalResult, report: PruneReport | undefined): string {
  const data = {
    blocks: result.blocks,
    atv: report ? report.blocks.map((b) => ({ index: b.index, label: b.label, cosDistAvg: b.cosDistAvg, k: b.k.length === 0 ? 0 : b.k.reduce((a, x) => a + x, 0) / b.k.length })) : [],
    layers: report ? report.layers.map((l) => ({ weight: l.weight, node: l.node, block: l.block, sparsity: l.sparsity })) : [],
  };
  // "<" escaped so no string in the data can close the script element.
  const json = JSON.stringify(data).replace(/</g, "\\u003c");
  const rows: Array<[string, string]> = [
    ["KL(dense ‖ pruned), mean over text positions", fmt(result.kl_mean)],
    ["top-1 agreement", fmt(result.top1_agreement)],
    ["perplexity, dense", fmt(result.ppl_dense)],
    ["perplexity, pruned", fmt(result.ppl_pruned)],
    ["samples / text positions", `${result.samples} / ${result.text_positions}`],
  ];
  const method = report ? `${report.method}, sparsity ${report.sparsity}${report.alpha !== undefined ? `, alpha ${report.alpha}` : ""}` : "no report.json beside the pruned model";
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>atvp eval: ${escapeHtml(result.pruned)}</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse}td{padding:3px 12px 3px 0}td.v{font-family:monospace}
svg.plot{border:1px solid #ddd;background:#fff;display:block;margin:8px 0}
.legend span{display:inline-block;margin-right:16px}.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
.note{color:#777}
</style></head>
<body data-rendered="0">
<h1>atvp eval</h1>
<p>dense <code>${escapeHtml(result.dense)}</code><br>pruned <code>${escapeHtml(result.pruned)}</code> (${escapeHtml(method)})<br>calibration <code>${escapeHtml(result.calib)}</code></p>
<table>${rows.map(([k, v]) => `<tr><td>${escapeHtml(k)}</td><td class="v">${escapeHtml(v)}</td></tr>`).join("")}</table>
<h2>Per-block relative error of the hidden state (pruned vs dense)</h2>
<div class="legend"><span><i class="sw" style="background:#1f77b4"></i>text tokens</span><span><i class="sw" style="background:#d62728"></i>visual tokens</span></div>
<div id="err"></div>
<h2>ATV per block: cosDistAvg (mean 1 − cos between a block's input and output, visual tokens)</h2>
<div id="cosdist"></div>
<h2>ATV per block: k (visual tokens kept per sample, mean over samples)</h2>
<div id="k"></div>
<h2>Per-linear sparsity</h2>
<div id="sparsity"></div>
<script type="application/json" id="data">${json}</script>
<script>
(function () {
  var data = JSON.parse(document.getElementById("data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var drawn = 0;
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, anchor, size) {
    var t = el("text", { x: x, y: y, "text-anchor": anchor || "middle", "font-size": size || 11, fill: "#333" }, parent);
    t.textContent = s;
    return t;
  }
  // Grouped bars: labels[i] with one value per series (null = no bar).
  function bars(target, labels, series, colors) {
    var box = document.getElementById(target);
    var valid = [];
    series.forEach(function (s) { s.forEach(function (v) { if (v !== null && isFinite(v)) valid.push(v); }); });
    if (labels.length === 0 || valid.length === 0) { box.innerHTML = '<p class="note">nothing to plot</p>'; return; }
    var W = Math.max(420, labels.length * (series.length * 14 + 16) + 80), H = 300, L = 60, B = 110, T = 12;
    var max = Math.max.apply(null, valid) || 1;
    var svg = el("svg", { "class": "plot", width: W, height: H, viewBox: "0 0 " + W + " " + H }, box);
    el("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#888" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#888" }, svg);
    for (var g = 0; g <= 4; g++) {
      var y = H - B - (H - B - T) * g / 4;
      el("line", { x1: L, y1: y, x2: W - 10, y2: y, stroke: "#eee" }, svg);
      text(svg, L - 4, y + 4, (max * g / 4).toPrecision(3), "end", 10);
    }
    var slot = (W - L - 10) / labels.length;
    var bw = Math.min(14, (slot - 6) / series.length);
    var n = 0;
    labels.forEach(function (label, i) {
      series.forEach(function (s, k) {
        var v = s[i];
        if (v === null || !isFinite(v)) return;
        var h = (H - B - T) * v / max;
        var r = el("rect", { x: L + i * slot + (slot - series.length * bw) / 2 + k * bw, y: H - B - h, width: bw - 1, height: Math.max(h, 0.5), fill: colors[k], "class": "bar" }, svg);
        el("title", {}, r).textContent = label + ": " + v;
        n++;
      });
      var t = text(svg, L + i * slot + slot / 2, H - B + 12, label, "end", 10);
      t.setAttribute("transform", "rotate(-35 " + (L + i * slot + slot / 2) + " " + (H - B + 12) + ")");
    });
    svg.setAttribute("data-bars", String(n));
    drawn++;
  }
  bars("err", data.blocks.map(function (b) { return b.label; }),
    [data.blocks.map(function (b) { return b.rel_err_text; }), data.blocks.map(function (b) { return b.rel_err_visual; })], ["#1f77b4", "#d62728"]);
  bars("cosdist", data.atv.map(function (b) { return b.label; }), [data.atv.map(function (b) { return b.cosDistAvg; })], ["#2ca02c"]);
  bars("k", data.atv.map(function (b) { return b.label; }), [data.atv.map(function (b) { return b.k; })], ["#9467bd"]);
  // The last two path components name a linear well enough ("q_proj/MatMul").
  bars("sparsity", data.layers.map(function (l) { return "b" + l.block + " " + (l.node || l.weight).split("/").slice(-2).join("/"); }),
    [data.layers.map(function (l) { return l.sparsity; })], ["#ff7f0e"]);
  document.body.setAttribute("data-rendered", String(drawn));
})();
</script>
</body></html>
`;
}
