// bfloat16 weights: read to float32 for the metric, written back as bfloat16 with exact zeros.
// (onnxruntime's CPU provider has no bfloat16 MatMul, so this runs the weight-only magnitude path.)
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { closeSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, StringStringEntryProtoSchema } from "../../services/gen/onnx_pb.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import { OnnxDataType as DT, bfloat16ToFloat, floatToBfloat16 } from "../../services/core/src/onnx/dtype.js";
import { readModel } from "../../services/core/src/onnx/modelFile.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("bf16");
after(() => tmp.cleanup());

test("bfloat16 linears are pruned in their own type: kept bits unchanged, pruned bits zero, exact count", async () => {
  const gen = await generateModel({ outDir: join(tmp.path, "m"), layers: 2, hidden: 64, seed: 3 });
  const model = fromBinary(ModelProtoSchema, readFileSync(gen.modelPath));
  const data = readFileSync(gen.dataPath);
  const fd = openSync(gen.dataPath, "r+");
  let end = statSync(gen.dataPath).size;
  const converted = new Map<string, Uint16Array>();
  for (const t of model.graph!.initializer) {
    if (t.dims.length !== 2 || !t.name.startsWith("onnx::MatMul")) continue;
    const ext = Object.fromEntries(t.externalData.map((e) => [e.key, e.value]));
    const f32 = new Float32Array(data.buffer.slice(data.byteOffset + Number(ext["offset"]), data.byteOffset + Number(ext["offset"]) + Number(ext["length"])));
    const bf = Uint16Array.from(f32, floatToBfloat16);
    const offset = Math.ceil(end / 4096) * 4096;
    writeSync(fd, new Uint8Array(bf.buffer), 0, bf.byteLength, offset);
    end = offset + bf.byteLength;
    t.dataType = DT.BFLOAT16;
    t.externalData = [
      create(StringStringEntryProtoSchema, { key: "location", value: "model.onnx.data" }),
      create(StringStringEntryProtoSchema, { key: "offset", value: String(offset) }),
      create(StringStringEntryProtoSchema, { key: "length", value: String(bf.byteLength) }),
    ];
    converted.set(t.name, bf);
  }
  closeSync(fd);
  writeFileSync(gen.modelPath, toBinary(ModelProtoSchema, model));

  const out = join(tmp.path, "out");
  const report = await pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.25, out });
  assert.ok(report.layers.length > 0);
  const loaded = readModel(join(out, "model.onnx"));
  const reader = new TensorData(loaded);
  for (const l of report.layers) {
    const t = loaded.model.graph!.initializer.find((x) => x.name === l.weight)!;
    assert.equal(t.dataType, DT.BFLOAT16);
    const bytes = await reader.read(t);
    const after = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
    const before = converted.get(l.weight)!;
    // Reference: one threshold over the matrix, the floor(n*s) smallest |w|, ties in storage order.
    const order = [...before.keys()].sort((a, b) => Math.abs(bfloat16ToFloat(before[a]!)) - Math.abs(bfloat16ToFloat(before[b]!)) || a - b);
    const expected = new Set(order.slice(0, Math.floor(before.length * 0.25)));
    for (let i = 0; i < before.length; i++) assert.equal(after[i], expected.has(i) ? 0 : before[i], `${l.weight}[${i}]`);
  }
  await reader.close();
});
