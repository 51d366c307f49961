/**
 * `atvp eval`: runs the dense and the pruned full decoders on calibration-format samples and
 * says how far the pruned one drifted: next-token KL and top-1 agreement at text positions,
 * perplexities where input ids are known, and per block the relative error of the hidden state
 * (the pruned model run on its own) over text and visual tokens.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type * as Ort from "onnxruntime-node";
import { loadCalibrationSet } from "../calib/calibSet.js";
import { CalibrationError, GraphError, InvalidArgumentError } from "../errors.js";
import { decoderPath, isModelFolder } from "../modelDir/modelFolder.js";
import { ortFloats } from "../runtime/ortFloats.js";
import { analyzeModel } from "../pipeline/modelAnalysis.js";
import { checkSample, SampleFeeds } from "../pipeline/sampleFeeds.js";
import type { PruneReport } from "../pipeline/report.js";
import { BlockDrift, LogitDrift } from "./driftMetrics.js";
import { openExposed } from "./exposedSession.js";

export interface EvalOptions {
  dense: string;
  pruned: string;
  calib: string;
  threads?: number;
  onSample?: (index: number, of: number) => void;
}

export interface EvalBlock { index: number; label: string; rel_err_text: number | null; rel_err_visual: number | null }

export interface EvalResult {
  kl_mean: number | null;
  top1_agreement: number | null;
  ppl_dense: number | null;
  ppl_pruned: number | null;
  blocks: EvalBlock[];
  samples: number;
  text_positions: number;
  predicted_tokens: number;
  dense: string;
  pruned: string;
  calib: string;
}

/** report.json of a pruned model: beside the .onnx, or at the top of a pruned folder. */
export function readPruneReport(pruned: string): PruneReport | undefined {
  const path = isModelFolder(pruned) ? join(pruned, "report.json") : join(dirname(pruned), "report.json");
  if (!existsSync(path)) return undefined;
  try {
    return JSON.parse(readFileSync(path, "utf8")) as PruneReport;
  } catch {
    return undefined;
  }
}

export async function evaluate(o: EvalOptions): Promise<EvalResult> {
  const densePath = decoderPath(o.dense);
  const prunedPath = decoderPath(o.pruned);
  const dense = analyzeModel(densePath);
  const pruned = analyzeModel(prunedPath);
  const inputsOf = (a: typeof dense) => a.index.graph.input.map((i) => i.name).join(",");
  if (inputsOf(dense) !== inputsOf(pruned)) throw new InvalidArgumentError("--pruned", `${prunedPath} takes inputs (${inputsOf(pruned)}) unlike the dense model (${inputsOf(dense)}); pass the pruned version of --dense`);
  const samples = loadCalibrationSet(o.calib, { seed: 0 });
  const main = dense.partition.mainInput;
  for (const s of samples) checkSample(s, main, dense.index.inputs.get(main)!, o.calib, dense.index.inputs.get("position_ids"));
  const logitsName = dense.index.graph.output.find((x) => /logits/.test(x.name))?.name ?? dense.index.graph.output[0]?.name;
  if (!logitsName) throw new GraphError(densePath, "the model has no outputs");
  const boundaries = dense.plan.stateAfter.slice(1, dense.partition.numBlocks + 1);
  const exposed = [...new Set(boundaries.flat())];
  const ort = await import("onnxruntime-node");
  const threads = o.threads ?? 1;
  const sessions: Ort.InferenceSession[] = [];
  try {
    sessions.push(await openExposed(ort, dense.loaded, exposed, threads));
    sessions.push(await openExposed(ort, pruned.loaded, exposed, threads));
    const logits = new LogitDrift();
    const blocks = boundaries.map(() => new BlockDrift());
    for (const [j, s] of samples.entries()) {
      const feeds = new SampleFeeds(s, main, dense.index.inputs);
      const outs: Record<string, Ort.Tensor>[] = [];
      for (const session of sessions) {
        const inputs: Record<string, Ort.Tensor> = {};
        for (const name of session.inputNames) {
          const t = feeds.get(name);
          inputs[name] = new ort.Tensor(t.type as never, t.data as never, t.dims);
        }
        outs.push(await session.run(inputs, [logitsName, ...exposed]));
      }
      const [d, p] = outs as [Record<string, Ort.Tensor>, Record<string, Ort.Tensor>];
      const dl = d[logitsName]!;
      const vocab = dl.dims[dl.dims.length - 1]!;
      if (dl.dims[dl.dims.length - 2] !== s.tokens) throw new CalibrationError(`${o.calib}:${s.line}`, `the model returned logits for ${dl.dims[dl.dims.length - 2]} of ${s.tokens} positions`);
      logits.add(ortFloats(dl, logitsName), ortFloats(p[logitsName]!, logitsName), vocab, s.attentionMask, s.imageMask, s.inputIds);
      const kind = Int8Array.from(s.attentionMask, (a, t) => (a ? (s.imageMask[t] ? 1 : 0) : -1));
      boundaries.forEach((parts, b) => {
        if (parts.length === 0) return;
        const sum = (out: Record<string, Ort.Tensor>) => {
          const acc = Float64Array.from(ortFloats(out[parts[0]!]!, parts[0]!));
          for (const name of parts.slice(1)) ortFloats(out[name]!, name).forEach((v, i) => { acc[i]! += v; });
          return acc;
        };
        const dh = d[parts[0]!]!;
        blocks[b]!.add(sum(d), sum(p), dh.dims[dh.dims.length - 1]!, kind);
      });
      o.onSample?.(j, samples.length);
    }
    const l = logits.result();
    return {
      kl_mean: l.kl_mean, top1_agreement: l.top1_agreement, ppl_dense: l.ppl_dense, ppl_pruned: l.ppl_pruned,
      blocks: blocks.map((b, index) => ({ index, label: dense.partition.blockLabels[index]!, ...b.result() })),
      samples: samples.length, text_positions: l.text_positions, predicted_tokens: l.predicted_tokens,
      dense: o.dense, pruned: o.pruned, calib: o.calib,
    };
  } finally {
    for (const s of sessions) await s.release();
  }
}
