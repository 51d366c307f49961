/**
 * What a worker needs to know about a job before running any block of it, derived from the
 * JobSpec exactly as `atvp prune` derives it (same spec resolution, same calibration samples,
 * same selection of linears, same output layout), so every worker computes the same bits and
 * writes them where the coordinator's writer expects them.
 */
import { toPruneSpec } from "../../rpc/jobSpec.js";
import type { JobSpec } from "../../gen/atvprune/v1/job_pb.js";
import type { CalibSample } from "../../core/src/calib/calibSet.js";
import { InvalidArgumentError, UnsupportedTypeError } from "../../core/src/errors.js";
import type { LinearInfo } from "../../core/src/graph/linears.js";
import { FLOAT_WEIGHT_TYPES, typeName } from "../../core/src/onnx/dtype.js";
import { rewrittenRegions, type Region } from "../../core/src/onnx/modelWriter.js";
import { TensorData } from "../../core/src/onnx/tensorData.js";
import { analyzeModel, type ModelAnalysis } from "../../core/src/pipeline/modelAnalysis.js";
import { loadSamples } from "../../core/src/pipeline/pruneModel.js";
import { isSelected, resolveSpec, type PruneSpec, type ResolvedSpec } from "../../core/src/pipeline/pruneSpec.js";
import { needsCalibration } from "../../core/src/methods/index.js";
import { SampleFeeds } from "../../core/src/pipeline/sampleFeeds.js";

export interface ShardJob {
  spec: ResolvedSpec;
  analysis: ModelAnalysis;
  data: TensorData;
  samples: CalibSample[];
  feeds: SampleFeeds[];
  /** the linears every worker prunes (over all blocks), as pruneModel selects them */
  selected: LinearInfo[];
  /** where each selected weight goes in <out>/model.onnx.data(.partial) */
  regions: Map<string, Region>;
}


export async function openShardJob(spec: JobSpec, worker: { threads: number; device: "cpu" | "cuda" | "auto" }): Promise<ShardJob> {
  const resolved = resolveSpec(toPruneSpec(spec, worker), worker.threads);
  const analysis = analyzeModel(resolved.model);
  const data = new TensorData(analysis.loaded);
  try {
    await data.validate();
    const selected = analysis.partition.blockLinears.flat().filter((l) => isSelected(resolved, l.weight, l.node));
    for (const l of selected) {
      if (!FLOAT_WEIGHT_TYPES.has(l.dataType)) {
        throw new UnsupportedTypeError(l.weight, `weight of ${l.node} is ${typeName(l.dataType)}; atv-prune prunes float32, float16 and bfloat16 weights (leave it dense with --exclude)`);
      }
      if (resolved.pattern.kind === "nm" && l.inDim % resolved.pattern.m !== 0) {
        throw new InvalidArgumentError(l.weight, `input dimension ${l.inDim} of ${l.node} is not a multiple of M=${resolved.pattern.m} for the ${resolved.patternText} pattern`);
      }
    }
    const samples = needsCalibration(resolved.method) ? loadSamples(resolved, analysis) : [];
    const feeds = samples.map((s) => new SampleFeeds(s, analysis.partition.mainInput, analysis.index.inputs));
    const regions = rewrittenRegions(analysis.loaded, data, resolved.out, new Set(selected.map((l) => l.weight)));
    return { spec: resolved, analysis, data, samples, feeds, selected, regions };
  } catch (err) {
    await data.close();
    throw err;
  }
}
