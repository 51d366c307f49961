/**
 * Turns a calibration sample into the graph inputs a stage needs: the main input (token ids or
 * embeddings, cast to the model's type), the attention mask, position ids, and empty past
 * key/values (a calibration forward is a prefill with no cache).
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

/** Checks a sample against the model's main input before any work starts. */
export function checkSample(sample: CalibSample, mainInput: string, vi: ValueInfoProto, calibPath: string): void {
  const where = `${calibPath}:${sample.line}`;
  const spec = tensorSpec(vi, mainInput);
  if (mainInput === "input_ids" || [DT.INT64, DT.INT32].includes(spec.elemType)) {
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
  if (sample.inputIds) {
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
    if (/position_ids/.test(name)) {
      // HF convention: positions count attended tokens; padding gets 1.
      const pos: number[] = [];
      let seen = 0;
      for (let t = 0; t < T; t++) {
        if (s.attentionMask[t]) pos.push(seen++);
        else pos.push(1);
      }
      return { type, dims: [1, T], data: cast(pos, spec.elemType, name) };
    }
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
    throw new GraphError(name, "atv-prune does not know how to feed this graph input during calibration (known: input_ids, inputs_embeds, attention_mask, position_ids, past key/values, seqlens_k, total_sequence_length)");
  }
}
