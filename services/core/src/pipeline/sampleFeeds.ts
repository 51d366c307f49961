/**
 * Turns a calibration sample into the graph inputs a stage needs: the main input (token ids or
 * embeddings, cast to the model's type), the attention mask, position ids (1-D, or multimodal
 * RoPE [3, T] laid out as the decoder declares them), empty past key/values (a calibration
 * forward is a prefill with no cache) and the exporters' switches (use_cache_branch false,
 * num_logits_to_keep 0 = every position).
 */
import type { ValueInfoProto } from "../../../gen/onnx_pb.js";
import type { CalibSample } from "../calib/calibSet.js";
import { CalibrationError, GraphError } from "../errors.js";
import { OnnxDataType as DT, floatToHalf, halfToFloatTable, ortType, typeName } from "../onnx/dtype.js";
import type { TensorData, WireTensor } from "../runtime/wireTensor.js";

interface TensorSpec { elemType: number; dims: (number | string)[] }

function tensorSpec(vi: ValueInfoProto, subject: string): TensorSpec {
  const t = vi.type?.value;
  if (t?.case !== "tensorType") throw new GraphError(subject, `graph input ${vi.name} is not a tensor`);
  return {
    elemType: t.value.elemType,
    dims: (t.value.shape?.dim ?? []).map((d) => (d.value.case === "dimValue" ? Number(d.value.value) : d.value.case === "dimParam" ? d.value.value : "?")),
  };
}

/** How a decoder takes its position ids, from the declared shape. */
type PositionLayout = "[T]" | "[1, T]" | "[3, 1, T]" | "[1, T, 3]";

function positionLayout(spec: TensorSpec): PositionLayout {
  const d = spec.dims;
  if (d.length === 1) return "[T]";
  if (d.length === 2) return "[1, T]";
  // Qwen2-VL exports (and onnxruntime-genai) declare [3, batch, sequence]; a few take [batch, sequence, 3].
  if (d.length === 3) return d[2] === 3 && d[0] !== 3 ? "[1, T, 3]" : "[3, 1, T]";
  throw new GraphError("position_ids", `the decoder declares position_ids with ${d.length} dimensions; atv-prune feeds [1, T], [3, 1, T] or [1, T, 3]`);
}

/** Checks a sample against the model's main input (and position ids) before any work starts. */
export function checkSample(sample: CalibSample, mainInput: string, vi: ValueInfoProto, calibPath: string, positionInput?: ValueInfoProto): void {
  const where = `${calibPath}:${sample.line}`;
  if (positionInput && sample.positionIds?.rows === 3) {
    const layout = positionLayout(tensorSpec(positionInput, positionInput.name));
    if (layout === "[T]" || layout === "[1, T]") {
      throw new CalibrationError(where, `the sample has multimodal RoPE position ids [3, T] (${sample.positionIds.file}); the decoder's ${positionInput.name} is ${layout} (1-D positions): use a calibration set made for this model`);
    }
  }
  const spec = tensorSpec(vi, mainInput);
  if ([DT.INT64, DT.INT32].includes(spec.elemType)) {
    if (!sample.inputIds) throw new CalibrationError(where, `the model takes ${mainInput} (token ids); the sample has inputs_embeds`);
    return;
  }
  if (!sample.embeds) throw new CalibrationError(where, `the model takes ${mainInput} (embeddings); the sample has input_ids`);
  const hidden = spec.dims[spec.dims.length - 1];
  if (typeof hidden === "number" && hidden !== sample.embeds.hidden) {
    throw new CalibrationError(where, `${sample.embeds.file} has hidden size ${sample.embeds.hidden}; the model's ${mainInput} has ${hidden}`);
  }
}

function cast(values: ArrayLike<number>, elemType: number, subject: string): TensorData {
  switch (elemType) {
    case DT.INT64: return BigInt64Array.from(Array.from(values, (v) => BigInt(v)));
    case DT.INT32: return Int32Array.from(values);
    case DT.FLOAT: return Float32Array.from(values);
    case DT.FLOAT16: return Uint16Array.from(values, (v) => floatToHalf(v));
    case DT.BOOL: return Uint8Array.from(values, (v) => (v ? 1 : 0));
    default: throw new GraphError(subject, `cannot feed an input of type ${typeName(elemType)}`);
  }
}

function mainInputFeed(sample: CalibSample, spec: TensorSpec, name: string): WireTensor {
  const type = ortType(spec.elemType, name);
  const takesIds = spec.elemType === DT.INT64 || spec.elemType === DT.INT32;
  if (sample.inputIds && (takesIds || !sample.embeds)) {
    const data = spec.elemType === DT.INT64 ? sample.inputIds : cast(Array.from(sample.inputIds, Number), spec.elemType, name);
    return { type, dims: [1, sample.tokens], data };
  }
  const e = sample.embeds!;
  const dims = [1, sample.tokens, e.hidden];
  if (spec.elemType === DT.FLOAT16) {
    return { type, dims, data: e.dtype === "float16" ? e.data : Uint16Array.from(e.data as Float32Array, (v) => floatToHalf(v)) };
  }
  if (spec.elemType === DT.FLOAT) {
    if (e.dtype === "float32") return { type, dims, data: e.data };
    const table = halfToFloatTable();
    return { type, dims, data: Float32Array.from(e.data as Uint16Array, (h) => table[h]!) };
  }
  throw new GraphError(name, `inputs of type ${typeName(spec.elemType)} are not supported`);
}

/** Feeds for one sample, built once per input name and reused by every stage. */
export class SampleFeeds {
  private readonly cache = new Map<string, WireTensor>();

  constructor(
    private readonly sample: CalibSample,
    private readonly mainInput: string,
    private readonly inputs: ReadonlyMap<string, ValueInfoProto>,
  ) {}

  get(name: string): WireTensor {
    let t = this.cache.get(name);
    if (!t) {
      t = this.build(name);
      this.cache.set(name, t);
    }
    return t;
  }

  private build(name: string): WireTensor {
    const vi = this.inputs.get(name);
    if (!vi) throw new GraphError(name, "not a graph input");
    const spec = tensorSpec(vi, name);
    const s = this.sample;
    const T = s.tokens;
    if (name === this.mainInput) return mainInputFeed(s, spec, name);
    const type = ortType(spec.elemType, name);
    if (/attention_mask/.test(name)) return { type, dims: [1, T], data: cast(s.attentionMask, spec.elemType, name) };
    if (/position_ids/.test(name)) return positionFeed(s, spec, name);
    if (/use_cache_branch/.test(name)) return { type, dims: spec.dims.map(() => 1), data: cast([0], spec.elemType, name) };
    // HF's logits_to_keep: 0 keeps the logits of every position (a prefill over the whole sample).
    if (/logits_to_keep/.test(name)) return { type, dims: spec.dims.map(() => 1), data: cast([0], spec.elemType, name) };
    if (/input_ids/.test(name) && s.inputIds) return mainInputFeed(s, spec, name);
    if (/past|cache/.test(name)) {
      const dims = spec.dims.map((d, i) => {
        if (typeof d === "number") return d;
        if (i === 0 || /batch/.test(d)) return 1;
        if (/past|seq|total|len/.test(d)) return 0;
        throw new GraphError(name, `cannot size dimension ${d} of the empty past key/value input`);
      });
      return { type, dims, data: cast([], spec.elemType, name) };
    }
    if (/seqlens_k/.test(name)) {
      const attended = s.attentionMask.reduce((a, b) => a + b, 0);
      return { type, dims: [1], data: cast([attended - 1], spec.elemType, name) };
    }
    if (/total_sequence_length/.test(name)) return { type, dims: [], data: cast([T], spec.elemType, name) };
    throw new GraphError(name, "atv-prune does not know how to feed this graph input during calibration (known: input_ids, inputs_embeds, attention_mask, position_ids, past key/values, seqlens_k, total_sequence_length, use_cache_branch, num_logits_to_keep)");
  }
}

/**
 * The sample's own position ids when the set has them; otherwise HF's 1-D convention (positions
 * count attended tokens, padding gets 1), repeated on the three axes for multimodal RoPE, which
 * is what Qwen's get_rope_index gives for text.
 */
function positionFeed(s: CalibSample, spec: TensorSpec, name: string): WireTensor {
  const T = s.tokens;
  const layout = positionLayout(spec);
  let rows: number[][];
  if (s.positionIds) {
    const d = s.positionIds.data;
    rows = Array.from({ length: s.positionIds.rows }, (_, r) => Array.from(d.subarray(r * T, (r + 1) * T), Number));
  } else {
    const pos: number[] = [];
    let seen = 0;
    for (let t = 0; t < T; t++) pos.push(s.attentionMask[t] ? seen++ : 1);
    rows = [pos];
  }
  const type = ortType(spec.elemType, name);
  if (layout === "[T]" || layout === "[1, T]") {
    if (rows.length !== 1) throw new CalibrationError(`${s.positionIds!.file}`, `multimodal position ids [3, ${T}] for a decoder whose ${name} is ${layout}`);
    return { type, dims: layout === "[T]" ? [T] : [1, T], data: cast(rows[0]!, spec.elemType, name) };
  }
  const three = rows.length === 3 ? rows : [rows[0]!, rows[0]!, rows[0]!];
  if (layout === "[3, 1, T]") return { type, dims: [3, 1, T], data: cast(three.flat(), spec.elemType, name) };
  const interleaved: number[] = [];
  for (let t = 0; t < T; t++) for (let r = 0; r < 3; r++) interleaved.push(three[r]![t]!);
  return { type, dims: [1, T, 3], data: cast(interleaved, spec.elemType, name) };
}
