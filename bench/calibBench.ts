/**
 * calib_stats_overhead: time of a block's calibration forward with statistics on (activations
 * fetched from onnxruntime and squared into float64 sums) over the same forward fetching only
 * the block's outputs. Both run the same session, samples and threads, in one process.
 */
import { join } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../services/gen/onnx_pb.js";
import { generateModel } from "../services/core/src/gen/genModel.js";
import { analyzeModel } from "../services/core/src/pipeline/modelAnalysis.js";
import { buildCutModel } from "../services/core/src/graph/blockCut.js";
import { TensorData } from "../services/core/src/onnx/tensorData.js";
import { ortType } from "../services/core/src/onnx/dtype.js";
import { loadCalibrationSet } from "../services/core/src/calib/calibSet.js";
import { SampleFeeds } from "../services/core/src/pipeline/sampleFeeds.js";
import { InferenceHost } from "../services/core/src/runtime/inferenceHost.js";
import { ChannelStats } from "../services/core/src/prune/activationStats.js";
import { attendedPool } from "../services/core/src/prune/poolSelect.js";
import type { WireTensor } from "../services/core/src/runtime/wireTensor.js";
import type { BenchLine } from "./benchLine.js";

export async function benchCalibration(workDir: string): Promise<BenchLine[]> {
  const gen = await generateModel({ outDir: join(workDir, "calib-model"), layers: 1, hidden: 1024, samples: 16, seqLen: 256, imageTokens: 128, force: true });
  const a = analyzeModel(gen.modelPath);
  const data = new TensorData(a.loaded);
  const cut = a.plan.blocks[0]!;
  const initializerBytes = new Map<string, Uint8Array>();
  for (const n of cut.initializers) initializerBytes.set(n, await data.read(a.index.initializers.get(n)!));
  const bound: Record<string, WireTensor> = {};
  for (const l of cut.weights) {
    const t = a.index.initializers.get(l.weight)!;
    const bytes = await data.read(t);
    bound[l.weight] = { type: ortType(t.dataType, l.weight), dims: t.dims.map(Number), data: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4) };
  }
  await data.close();
  const host = InferenceHost.start({ threads: 1, device: "cpu" });
  try {
    const session = await host.load(cut.label, toBinary(ModelProtoSchema, buildCutModel({ source: a.loaded.model, index: a.index, cut, initializerBytes, floatType: a.floatType })), bound);
    const samples = loadCalibrationSet(gen.calibPath, { seed: 21 });
    const feeds = samples.map((s) => {
      const f = new SampleFeeds(s, a.partition.mainInput, a.index.inputs);
      const inputs: Record<string, WireTensor> = {};
      for (const n of [...cut.sideInputs, ...cut.stateInputs]) inputs[n] = f.get(n);
      return inputs;
    });
    const tokens = samples.reduce((s, x) => s + x.tokens, 0);
    const plain = async () => { for (const f of feeds) await host.run(session, f, cut.stateOutputs); };
    const withStats = async () => {
      const stats = new Map(cut.activations.map((n) => [n, new ChannelStats(n, 0)] as const));
      for (const [j, f] of feeds.entries()) {
        const out = await host.run(session, f, [...cut.stateOutputs, ...cut.activations]);
        for (const n of cut.activations) {
          const t = out[n]!;
          let s = stats.get(n)!;
          if (s.channels === 0) stats.set(n, (s = new ChannelStats(n, t.dims[t.dims.length - 1]!)));
          s.add(t, attendedPool(samples[j]!), `sample ${j}`);
        }
      }
    };
    await plain();
    await withStats();
    const best = async (fn: () => Promise<void>) => {
      let b = Infinity;
      for (let i = 0; i < 3; i++) {
        const t0 = performance.now();
        await fn();
        b = Math.min(b, performance.now() - t0);
      }
      return b / 1000;
    };
    const tPlain = await best(plain);
    const tStats = await best(withStats);
    return [
      { bench: "calib_tokens_per_s", value: tokens / tStats, unit: "tokens/s", hidden: 1024, threads: 1 },
      { bench: "calib_stats_overhead", value: tStats / tPlain, unit: "ratio", plainTokensPerS: tokens / tPlain },
    ];
  } finally {
    await host.close();
  }
}
