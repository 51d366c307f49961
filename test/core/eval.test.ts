// `atvp eval`: every figure against a direct computation (full models fed by hand, softmax, KL,
// argmax, NLL and hidden-state norms written out here), identities on identical models, the
// CLI's JSON fields, and the HTML report rendered in headless Chromium (screenshot kept).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync, existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { ModelProtoSchema, ValueInfoProtoSchema } from "../../services/gen/onnx_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { evaluate } from "../../services/core/src/eval/evaluate.js";
import { readNpy } from "../../services/core/src/calib/npy.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { CLI, REPO, tempDir } from "../support/fixtures.js";

const run = promisify(execFile);
const tmp = tempDir("eval");
after(() => tmp.cleanup());

const H = 64;
const V = 256;
let model: string;
let pruned: string;
let calib: string;

interface Line { inputs_embeds: string; image_mask: number[]; attention_mask?: number[]; input_ids: number[] }
let lines: Line[];

before(async () => {
  const g = await generateModel({ outDir: join(tmp.path, "m"), layers: 2, hidden: H, samples: 3, seqLen: 20, imageTokens: 8, seed: 11 });
  model = g.modelPath;
  // Token ids for perplexity (any ids: the embeddings are what the decoder sees).
  lines = readFileSync(g.calibPath, "utf8").trim().split("\n").map((l, s) => {
    const v = JSON.parse(l) as Line;
    return { ...v, input_ids: v.image_mask.map((_, t) => (t * 31 + s * 7 + 3) % V) };
  });
  calib = join(tmp.path, "m", "calib-ids.jsonl");
  writeFileSync(calib, lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
  const out = join(tmp.path, "pruned");
  await pruneModel({ model, calib, out, method: "atv", sparsity: 0.5, alpha: 8, threads: 1 } as PruneSpec);
  pruned = join(out, "model.onnx");
});

/** Logits and the two block outputs of one model for every sample, fed by hand. */
async function direct(path: string): Promise<Array<{ logits: Float32Array; blocks: Float32Array[] }>> {
  const names = ["/model/layers.0/Add_1_output_0", "/model/layers.1/Add_1_output_0"];
  const m = fromBinary(ModelProtoSchema, readFileSync(path));
  for (const n of names) m.graph!.output.push(create(ValueInfoProtoSchema, { name: n }));
  const exposed = path.replace(/\.onnx$/, ".direct.onnx");
  writeFileSync(exposed, toBinary(ModelProtoSchema, m));
  const session = await ort.InferenceSession.create(exposed);
  const out = [];
  for (const l of lines) {
    const x = readNpy(join(tmp.path, "m", l.inputs_embeds));
    const T = l.image_mask.length;
    const mask = l.attention_mask ?? new Array(T).fill(1);
    let seen = 0;
    const pos = mask.map((a) => (a ? seen++ : 1));
    const r = await session.run({
      inputs_embeds: new ort.Tensor("float32", x.data as Float32Array, [1, T, H]),
      attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask, BigInt), [1, T]),
      position_ids: new ort.Tensor("int64", BigInt64Array.from(pos, BigInt), [1, T]),
    });
    out.push({ logits: r["logits"]!.data as Float32Array, blocks: names.map((n) => r[n]!.data as Float32Array) });
  }
  await session.release();
  return out;
}

test("eval figures equal a direct computation", async () => {
  const result = await evaluate({ dense: model, pruned, calib });
  const d = await direct(model);
  const p = await direct(pruned);
  let kl = 0, agree = 0, n = 0, nllD = 0, nllP = 0, m = 0;
  const err = [[0, 0], [0, 0]], ref = [[0, 0], [0, 0]];
  lines.forEach((l, s) => {
    const T = l.image_mask.length;
    const att = l.attention_mask ?? new Array(T).fill(1);
    const isText = (t: number) => att[t] === 1 && l.image_mask[t] === 0;
    for (let t = 0; t < T; t++) {
      const pd = Array.from(d[s]!.logits.subarray(t * V, (t + 1) * V));
      const pp = Array.from(p[s]!.logits.subarray(t * V, (t + 1) * V));
      const softmax = (z: number[]) => { const mx = Math.max(...z); const e = z.map((v) => Math.exp(v - mx)); const sum = e.reduce((a, b) => a + b, 0); return e.map((v) => v / sum); };
      const P = softmax(pd), Q = softmax(pp);
      if (isText(t)) {
        kl += P.reduce((a, pv, v) => a + pv * Math.log(pv / Q[v]!), 0);
        if (pd.indexOf(Math.max(...pd)) === pp.indexOf(Math.max(...pp))) agree++;
        n++;
      }
      if (t + 1 < T && att[t] === 1 && isText(t + 1)) {
        nllD -= Math.log(P[l.input_ids[t + 1]!]!);
        nllP -= Math.log(Q[l.input_ids[t + 1]!]!);
        m++;
      }
      if (att[t] !== 1) continue;
      const k = l.image_mask[t];
      for (let b = 0; b < 2; b++) for (let c = 0; c < H; c++) {
        const yd = d[s]!.blocks[b]![t * H + c]!, yp = p[s]!.blocks[b]![t * H + c]!;
        err[b]![k!]! += (yp - yd) ** 2;
        ref[b]![k!]! += yd ** 2;
      }
    }
  });
  const close = (a: number | null, b: number, label: string) => assert.ok(a !== null && Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)), `${label}: ${a} vs ${b}`);
  close(result.kl_mean, kl / n, "kl_mean");
  close(result.top1_agreement, agree / n, "top1_agreement");
  close(result.ppl_dense, Math.exp(nllD / m), "ppl_dense");
  close(result.ppl_pruned, Math.exp(nllP / m), "ppl_pruned");
  for (let b = 0; b < 2; b++) {
    close(result.blocks[b]!.rel_err_text, Math.sqrt(err[b]![0]!) / Math.sqrt(ref[b]![0]!), `block ${b} text`);
    close(result.blocks[b]!.rel_err_visual, Math.sqrt(err[b]![1]!) / Math.sqrt(ref[b]![1]!), `block ${b} visual`);
  }
  assert.ok(result.kl_mean! > 0);
  assert.equal(result.text_positions, n);
});

test("a model against itself: KL 0, top-1 1, equal perplexities, zero block errors; no input_ids: perplexity null", async () => {
  const same = await evaluate({ dense: model, pruned: model, calib });
  assert.equal(same.kl_mean, 0);
  assert.equal(same.top1_agreement, 1);
  assert.equal(same.ppl_dense, same.ppl_pruned);
  for (const b of same.blocks) assert.deepEqual([b.rel_err_text, b.rel_err_visual], [0, 0]);
  const noIds = join(tmp.path, "m", "calib-noids.jsonl");
  writeFileSync(noIds, lines.map(({ input_ids: _x, ...rest }) => JSON.stringify(rest)).join("\n") + "\n");
  const r = await evaluate({ dense: model, pruned, calib: noIds });
  assert.equal(r.ppl_dense, null);
  assert.equal(r.ppl_pruned, null);
  // Text-only samples: no visual tokens anywhere, rel_err_visual null.
  const textOnly = join(tmp.path, "m", "calib-text.jsonl");
  writeFileSync(textOnly, lines.map((l) => JSON.stringify({ ...l, image_mask: l.image_mask.map(() => 0) })).join("\n") + "\n");
  const t = await evaluate({ dense: model, pruned, calib: textOnly });
  assert.ok(t.blocks.every((b) => b.rel_err_visual === null && b.rel_err_text !== null));
});

test("CLI: eval --json prints one object with the issue's fields", async () => {
  const { stdout } = await run(process.execPath, [CLI, "eval", "--dense", model, "--pruned", pruned, "--calib", calib, "--json"]);
  const obj = JSON.parse(stdout) as Record<string, unknown>;
  for (const k of ["kl_mean", "top1_agreement", "ppl_dense", "ppl_pruned", "blocks"]) assert.ok(k in obj, k);
  assert.deepEqual(Object.keys((obj["blocks"] as object[])[0]!).filter((k) => k !== "label"), ["index", "rel_err_text", "rel_err_visual"]);
  assert.equal(stdout.trim().split("\n").length, 1);
});

function chromium(): string | undefined {
  for (const c of ["chromium", "chromium-browser"]) {
    try {
      execFileSync("which", [c], { stdio: "pipe" });
      return c;
    } catch { /* next */ }
  }
  return undefined;
}

test("--html: a self-contained page whose plots render in headless Chromium (screenshot kept in .work/screenshots)", async (t) => {
  const html = join(tmp.path, "report.html");
  await run(process.execPath, [CLI, "eval", "--dense", model, "--pruned", pruned, "--calib", calib, "--html", html]);
  const page = readFileSync(html, "utf8");
  assert.ok(!/src=["']?https?:|href=["']?https?:/.test(page), "no external resources");
  const browser = chromium();
  if (!browser) {
    t.skip("chromium is not installed (make system-deps installs it)");
    return;
  }
  const flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", `--user-data-dir=${join(tmp.path, "chromium-profile")}`];
  const { stdout: dom } = await run(browser, [...flags, "--dump-dom", `file://${html}`], { maxBuffer: 1 << 24 });
  assert.match(dom, /<body data-rendered="4"/);
  const bars = [...dom.matchAll(/data-bars="(\d+)"/g)].map((x) => Number(x[1]));
  // 2 blocks x (text, visual); cosDistAvg and k per block; 14 linears.
  assert.deepEqual(bars, [4, 2, 2, 14]);
  const shots = join(REPO, ".work", "screenshots");
  mkdirSync(shots, { recursive: true });
  const png = join(shots, "eval-report.png");
  await run(browser, [...flags, "--window-size=1100,1700", `--screenshot=${png}`, `file://${html}`]);
  assert.ok(existsSync(png) && statSync(png).size > 10_000, "screenshot written");
});
