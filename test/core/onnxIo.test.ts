// ONNX file IO: reading models and their external weights, and writing pruned models whose
// untouched weights, graph and outputs are bit-identical to the source.
import { REPO } from "../support/fixtures.js";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { clone, create, toBinary } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { ortTensor } from "../../services/core/src/runtime/ortTensor.js";
import {
  GraphProtoSchema,
  ModelProtoSchema,
  StringStringEntryProtoSchema,
  TensorProtoSchema,
  TensorProto_DataLocation,
  TensorProto_DataType as DT,
  type ModelProto,
  type TensorProto,
} from "../../services/gen/onnx_pb.js";
import { ExternalDataError, InvalidArgumentError, OnnxFormatError, OutputExistsError, UnsupportedTypeError } from "../../services/core/src/errors.js";
import { readModel, writeModel, type LoadedModel } from "../../services/core/src/onnx/modelFile.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { PrunedModelWriter } from "../../services/core/src/onnx/modelWriter.js";
import { prepareOutputDir } from "../../services/core/src/onnx/outputDir.js";


const FIXTURE = process.env.ATVP_FIXTURE_DIR ?? resolve(REPO, "../shared/fixtures/tiny-llama-fp16-genai");
const FIXTURE_MODEL = join(FIXTURE, "model.onnx");
const FIXTURE_DATA = join(FIXTURE, "model.onnx.data");
const Q_PROJ = "model.layers.0.attn.q_proj.MatMul.weight";

let tmpRoot = "";
let tmpCount = 0;
function tmp(): string {
  const d = join(tmpRoot, String(tmpCount++));
  mkdirSync(d);
  return d;
}

before(() => {
  tmpRoot = mkdtempSync(join(tmpdir(), "atvp-onnxio-"));
});
after(() => {
  rmSync(tmpRoot, { recursive: true, force: true });
});

function initializer(m: ModelProto, name: string): TensorProto {
  const t = m.graph!.initializer.find((i) => i.name === name);
  assert.ok(t, `initializer ${name} not found`);
  return t;
}

function entry(t: TensorProto, key: string): string | undefined {
  return t.externalData.find((e) => e.key === key)?.value;
}

/** The graph with every initializer's storage made uniform, so layouts compare equal. */
function graphWithoutStorage(m: ModelProto): Uint8Array {
  const g = clone(GraphProtoSchema, m.graph!);
  for (const t of g.initializer) {
    t.externalData = [];
    t.dataLocation = TensorProto_DataLocation.DEFAULT;
  }
  return toBinary(GraphProtoSchema, g);
}

async function allBytes(src: LoadedModel): Promise<Map<string, Uint8Array>> {
  const data = new TensorData(src);
  try {
    const out = new Map<string, Uint8Array>();
    for (const t of src.model.graph!.initializer) out.set(t.name, await data.read(t));
    return out;
  } finally {
    await data.close();
  }
}

async function writePruned(src: LoadedModel, outDir: string, rewrites: Map<string, Uint8Array>): Promise<LoadedModel> {
  const data = new TensorData(src);
  try {
    await prepareOutputDir(outDir, false);
    const writer = await PrunedModelWriter.create(src, data, outDir, new Set(rewrites.keys()));
    await Promise.all([...rewrites].map(([name, bytes]) => writer.writeTensor(name, bytes)));
    await writer.finalize();
  } finally {
    await data.close();
  }
  return readModel(join(outDir, "model.onnx"));
}

async function runFixture(modelPath: string): Promise<Uint8Array> {
  const session = await ort.InferenceSession.create(modelPath);
  const feeds: Record<string, ort.Tensor> = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from([1n, 5n, 100n, 31999n]), [1, 4]),
    attention_mask: new ort.Tensor("int64", BigInt64Array.from([1n, 1n, 1n, 1n]), [1, 4]),
    position_ids: new ort.Tensor("int64", BigInt64Array.from([0n, 1n, 2n, 3n]), [1, 4]),
  };
  for (let layer = 0; layer < 2; layer++) {
    for (const kv of ["key", "value"]) {
      feeds[`past_key_values.${layer}.${kv}`] = ortTensor("float16", new Uint16Array(0), [1, 1, 0, 16]);
    }
  }
  const out = await session.run(feeds);
  await session.release();
  const logits = out.logits!;
  assert.deepEqual(logits.dims, [1, 4, 32000]);
  const d = logits.data as Uint16Array;
  return new Uint8Array(d.buffer, d.byteOffset, d.byteLength).slice();
}

/** A copy of the fixture in its own folder, which a test may then damage. */
function fixtureCopy(withData: boolean): string {
  const d = tmp();
  copyFileSync(FIXTURE_MODEL, join(d, "model.onnx"));
  if (withData) copyFileSync(FIXTURE_DATA, join(d, "model.onnx.data"));
  return d;
}

async function rejectsWith<E extends Error>(p: Promise<unknown> | (() => unknown), cls: new (...a: never[]) => E, parts: string[]): Promise<E> {
  let caught: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${String(caught)}`);
  for (const part of parts) assert.ok(caught.message.includes(part), `message "${caught.message}" does not mention "${part}"`);
  return caught;
}

describe("reading the fixture", () => {
  test("readModel parses the fp16 fixture and every initializer is external", () => {
    const src = readModel(FIXTURE_MODEL);
    assert.equal(src.path, resolve(FIXTURE_MODEL));
    assert.equal(src.dir, resolve(FIXTURE));
    assert.equal(src.model.graph!.initializer.length, 23);
    const data = new TensorData(src);
    for (const t of src.model.graph!.initializer) {
      assert.ok(data.isExternal(t), t.name);
      assert.equal(t.dataType, DT.FLOAT16);
    }
  });

  test("read returns exactly the bytes at the tensor's offset in model.onnx.data", async () => {
    const src = readModel(FIXTURE_MODEL);
    const data = new TensorData(src);
    const file = readFileSync(FIXTURE_DATA);
    try {
      for (const name of [Q_PROJ, "model.embed_tokens.weight", "lm_head.MatMul.weight"]) {
        const t = initializer(src.model, name);
        const range = data.externalRange(t)!;
        assert.equal(range.file, resolve(FIXTURE_DATA));
        assert.equal(range.length, data.byteLength(t));
        const bytes = await data.read(t);
        assert.deepEqual(bytes, new Uint8Array(file.subarray(range.offset, range.offset + range.length)));
      }
      const q = initializer(src.model, Q_PROJ);
      assert.equal(data.byteLength(q), 16 * 16 * 2);
      const part = await data.readRange(q, 100, new Uint8Array(50));
      const off = Number(entry(q, "offset"));
      assert.deepEqual(part, new Uint8Array(file.subarray(off + 100, off + 150)));
      await data.validate();
    } finally {
      await data.close();
    }
  });
});

describe("writing a pruned model", () => {
  test("round trip with nothing rewritten keeps every byte, the graph, and 4096-aligned offsets", async () => {
    const src = readModel(FIXTURE_MODEL);
    const outDir = join(tmp(), "out");
    const out = await writePruned(src, outDir, new Map());
    assert.deepEqual(readdirSync(outDir).sort(), ["model.onnx", "model.onnx.data"]);

    const before = await allBytes(src);
    const afterBytes = await allBytes(out);
    assert.deepEqual([...afterBytes.keys()], [...before.keys()]);
    for (const [name, bytes] of before) assert.deepEqual(afterBytes.get(name), bytes, name);

    for (const t of out.model.graph!.initializer) {
      assert.equal(t.dataLocation, TensorProto_DataLocation.EXTERNAL);
      assert.equal(entry(t, "location"), "model.onnx.data");
      assert.equal(Number(entry(t, "offset")) % 4096, 0, t.name);
      assert.equal(t.rawData.length, 0);
    }
    assert.deepEqual(graphWithoutStorage(out.model), graphWithoutStorage(src.model));
    const strip = (m: ModelProto) => {
      const c = clone(ModelProtoSchema, m);
      c.graph = undefined;
      return toBinary(ModelProtoSchema, c);
    };
    assert.deepEqual(strip(out.model), strip(src.model));
  });

  test("rewriting one weight changes that tensor only", async () => {
    const src = readModel(FIXTURE_MODEL);
    const q = initializer(src.model, Q_PROJ);
    const newBytes = new Uint8Array(512).map((_, i) => (i * 7 + 3) & 0xff);
    const outDir = join(tmp(), "out");

    const data = new TensorData(src);
    await prepareOutputDir(outDir, false);
    const writer = await PrunedModelWriter.create(src, data, outDir, new Set([Q_PROJ]));
    const region = writer.plannedRegion(Q_PROJ)!;
    assert.equal(region.length, 512);
    assert.equal(region.offset % 4096, 0);
    assert.ok(writer.plannedRegion("lm_head.MatMul.weight"));
    assert.equal(writer.plannedRegion("no such tensor"), undefined);
    await writer.writeTensor(Q_PROJ, newBytes);
    await writer.finalize();
    await data.close();

    const out = readModel(join(outDir, "model.onnx"));
    const before = await allBytes(src);
    const afterBytes = await allBytes(out);
    for (const [name, bytes] of before) {
      if (name === Q_PROJ) assert.deepEqual(afterBytes.get(name), newBytes);
      else assert.deepEqual(afterBytes.get(name), bytes, name);
    }
    assert.equal(entry(initializer(out.model, Q_PROJ), "offset"), String(region.offset));
    assert.deepEqual(initializer(out.model, Q_PROJ).dims, q.dims);
    assert.ok(await runFixture(join(outDir, "model.onnx")));
  });

  test("the unmodified round trip gives onnxruntime logits bit-identical to the source", async () => {
    const src = readModel(FIXTURE_MODEL);
    const outDir = join(tmp(), "out");
    await writePruned(src, outDir, new Map());
    const original = await runFixture(FIXTURE_MODEL);
    const roundTrip = await runFixture(join(outDir, "model.onnx"));
    assert.deepEqual(roundTrip, original);
  });
});

/** Y = X · W + B, with W in raw_data, B in float_data, plus fp16 / int64 / double constants. */
function inlineModel(): ModelProto {
  const f32 = (values: number[]) => new Uint8Array(Float32Array.from(values).buffer);
  const tensorType = (elemType: number, dims: number[]) => ({
    value: {
      case: "tensorType" as const,
      value: { elemType, shape: { dim: dims.map((d) => ({ value: { case: "dimValue" as const, value: BigInt(d) } })) } },
    },
  });
  return create(ModelProtoSchema, {
    irVersion: 8n,
    producerName: "onnxIo.test",
    opsetImport: [{ domain: "", version: 14n }],
    graph: {
      name: "inline",
      node: [
        { opType: "MatMul", input: ["X", "W"], output: ["XW"], name: "mm" },
        { opType: "Add", input: ["XW", "B"], output: ["Y"], name: "add" },
      ],
      initializer: [
        { name: "W", dataType: DT.FLOAT, dims: [3n, 2n], rawData: f32([1, 2, 3, 4, 5, 6]) },
        { name: "B", dataType: DT.FLOAT, dims: [2n], floatData: [0.5, -0.5] },
        { name: "H", dataType: DT.FLOAT16, dims: [2n], int32Data: [0x3c00, 0xc000] },
        { name: "I", dataType: DT.INT64, dims: [2n], int64Data: [-1n, 1n << 40n] },
        { name: "D", dataType: DT.DOUBLE, dims: [1n], doubleData: [0.25] },
        { name: "S", dataType: DT.INT8, dims: [2n], int32Data: [-2, 127] },
      ],
      input: [{ name: "X", type: tensorType(DT.FLOAT, [2, 3]) }],
      output: [{ name: "Y", type: tensorType(DT.FLOAT, [2, 2]) }],
    },
  });
}

async function runInline(modelPath: string): Promise<number[]> {
  // Severity 3: the unused H/I/D/S constants would otherwise log a warning each.
  const session = await ort.InferenceSession.create(modelPath, { logSeverityLevel: 3 });
  const out = await session.run({ X: new ort.Tensor("float32", Float32Array.from([1, 0, 0, 0, 1, 1]), [2, 3]) });
  await session.release();
  return [...(out.Y!.data as Float32Array)];
}

describe("inline tensors", () => {
  test("typed fields decode to little-endian bytes per the ONNX spec", async () => {
    const d = tmp();
    await writeModel(join(d, "model.onnx"), inlineModel());
    const src = readModel(join(d, "model.onnx"));
    const bytes = await allBytes(src);
    const view = (name: string) => Buffer.from(bytes.get(name)!);
    assert.deepEqual([...new Float32Array(bytes.get("W")!.slice().buffer)], [1, 2, 3, 4, 5, 6]);
    assert.deepEqual([...new Float32Array(bytes.get("B")!.slice().buffer)], [0.5, -0.5]);
    assert.deepEqual([view("H").readUInt16LE(0), view("H").readUInt16LE(2)], [0x3c00, 0xc000]);
    assert.deepEqual([view("I").readBigInt64LE(0), view("I").readBigInt64LE(8)], [-1n, 1n << 40n]);
    assert.equal(view("D").readDoubleLE(0), 0.25);
    assert.deepEqual([view("S").readInt8(0), view("S").readInt8(1)], [-2, 127]);
    assert.deepEqual(readdirSync(d), ["model.onnx"]);
  });

  test("round trip keeps inline tensors inline, and a rewritten one moves to external data", async () => {
    const d = tmp();
    await writeModel(join(d, "model.onnx"), inlineModel());
    const src = readModel(join(d, "model.onnx"));
    assert.deepEqual(await runInline(src.path), [1.5, 1.5, 8.5, 9.5]);

    const same = await writePruned(src, join(d, "same"), new Map());
    assert.deepEqual(toBinary(ModelProtoSchema, same.model), toBinary(ModelProtoSchema, src.model));
    assert.equal(statSync(join(d, "same", "model.onnx.data")).size, 0);

    const newW = new Uint8Array(Float32Array.from([1, 0, 0, 0, 0, 2]).buffer);
    const newB = new Uint8Array(Float32Array.from([0, 0]).buffer);
    const out = await writePruned(src, join(d, "pruned"), new Map([["W", newW], ["B", newB]]));
    const w = initializer(out.model, "W");
    const b = initializer(out.model, "B");
    for (const t of [w, b]) {
      assert.equal(t.dataLocation, TensorProto_DataLocation.EXTERNAL);
      assert.equal(t.rawData.length, 0);
      assert.equal(t.floatData.length, 0);
      assert.equal(Number(entry(t, "offset")) % 4096, 0);
    }
    assert.equal(entry(w, "offset"), "0");
    assert.equal(entry(b, "offset"), "4096");
    const before = await allBytes(src);
    const afterBytes = await allBytes(out);
    assert.deepEqual(afterBytes.get("W"), newW);
    assert.deepEqual(afterBytes.get("B"), newB);
    for (const name of ["H", "I", "D", "S"]) {
      assert.deepEqual(afterBytes.get(name), before.get(name));
      assert.equal(initializer(out.model, name).dataLocation, TensorProto_DataLocation.DEFAULT);
    }
    assert.deepEqual(await runInline(out.path), [1, 0, 0, 2]);
  });
});

describe("bad input is refused with the file or tensor named", () => {
  test("a missing or empty model file", async () => {
    const d = tmp();
    await rejectsWith(() => readModel(join(d, "nope.onnx")), OnnxFormatError, [join(d, "nope.onnx"), "not found"]);
    writeFileSync(join(d, "empty.onnx"), "");
    await rejectsWith(() => readModel(join(d, "empty.onnx")), OnnxFormatError, [join(d, "empty.onnx"), "empty"]);
  });

  test("a JSON file is not ONNX", async () => {
    const p = join(tmp(), "model.onnx");
    writeFileSync(p, JSON.stringify({ model: "llama", layers: 2, weights: [1, 2, 3] }, null, 2));
    await rejectsWith(() => readModel(p), OnnxFormatError, [p]);
    // Valid protobuf (ir_version = 7 and nothing else) that is still no model.
    writeFileSync(p, new Uint8Array([0x08, 0x07]));
    await rejectsWith(() => readModel(p), OnnxFormatError, [p, "no opset_import", "no graph"]);
  });

  test("random bytes are not ONNX", async () => {
    const d = tmp();
    let seed = 12345;
    for (let k = 0; k < 20; k++) {
      const bytes = new Uint8Array(4096).map(() => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return seed >>> 24;
      });
      const p = join(d, `random${k}.onnx`);
      writeFileSync(p, bytes);
      await rejectsWith(() => readModel(p), OnnxFormatError, [p]);
    }
  });

  test("a model truncated in the middle", async () => {
    const p = join(tmp(), "model.onnx");
    const full = readFileSync(FIXTURE_MODEL);
    writeFileSync(p, full.subarray(0, full.length >> 1));
    await rejectsWith(() => readModel(p), OnnxFormatError, [p, "truncated"]);
  });

  test("a missing external data file", async () => {
    const d = fixtureCopy(false);
    const src = readModel(join(d, "model.onnx"));
    const data = new TensorData(src);
    const file = join(d, "model.onnx.data");
    await rejectsWith(data.validate(), ExternalDataError, ["model.embed_tokens.weight", file, "does not exist"]);
    await rejectsWith(data.read(initializer(src.model, Q_PROJ)), ExternalDataError, [Q_PROJ, file]);
    await rejectsWith(PrunedModelWriter.create(src, data, join(d, "out"), new Set()), ExternalDataError, [file]);
    assert.equal(existsSync(join(d, "out")), false);
    await data.close();
  });

  test("an external data file shorter than the model says", async () => {
    const d = fixtureCopy(false);
    const file = join(d, "model.onnx.data");
    writeFileSync(file, readFileSync(FIXTURE_DATA).subarray(0, 1_500_000));
    const src = readModel(join(d, "model.onnx"));
    const data = new TensorData(src);
    // lm_head is the last tensor: [1106080, 2130080).
    await rejectsWith(data.validate(), ExternalDataError, ["lm_head.MatMul.weight", file, "2130080", "1500000"]);
    await rejectsWith(data.read(initializer(src.model, "lm_head.MatMul.weight")), ExternalDataError, ["lm_head.MatMul.weight", "1500000"]);
    // Tensors that fit are still readable.
    assert.equal((await data.read(initializer(src.model, Q_PROJ))).length, 512);
    await data.close();
  });

  test("external locations outside the model folder, bad lengths and offsets", async () => {
    const src = readModel(FIXTURE_MODEL);
    const setEntry = (t: TensorProto, key: string, value: string) => {
      const c = clone(TensorProtoSchema, t);
      c.externalData = c.externalData.filter((e) => e.key !== key);
      c.externalData.push(create(StringStringEntryProtoSchema, { key, value }));
      return c;
    };
    const q = initializer(src.model, Q_PROJ);
    const data = new TensorData(src);
    for (const location of ["../x", "../../etc/passwd", "sub/../../x", "/etc/passwd", "."]) {
      const bad = setEntry(q, "location", location);
      await rejectsWith(data.read(bad), ExternalDataError, [Q_PROJ, location]);
    }
    await rejectsWith(data.read(setEntry(q, "length", "100")), ExternalDataError, [Q_PROJ, "100", "512"]);
    await rejectsWith(data.read(setEntry(q, "offset", "-4")), ExternalDataError, [Q_PROJ, "-4"]);

    const escaped = clone(ModelProtoSchema, src.model);
    escaped.graph!.initializer[3] = setEntry(escaped.graph!.initializer[3]!, "location", "../x");
    const escapedData = new TensorData({ ...src, model: escaped });
    await rejectsWith(escapedData.validate(), ExternalDataError, ["../x", "outside"]);
    await escapedData.close();
    await data.close();
  });

  test("an element type without a fixed size (STRING)", async () => {
    const t = create(TensorProtoSchema, { name: "vocab", dataType: DT.STRING, dims: [2n], stringData: [new Uint8Array([65]), new Uint8Array([66])] });
    const data = new TensorData(readModel(FIXTURE_MODEL));
    await rejectsWith(() => data.byteLength(t), UnsupportedTypeError, ["vocab", "STRING"]);
  });
});

describe("output folder and writer misuse", () => {
  test("prepareOutputDir creates, refuses a non-empty folder without force, and removes only our files", async () => {
    const d = join(tmp(), "a", "b");
    await prepareOutputDir(d, false);
    assert.ok(statSync(d).isDirectory());
    await prepareOutputDir(d, false);
    for (const f of ["model.onnx", "model.onnx.data", "report.json", "model.onnx.data.partial", "notes.txt"]) writeFileSync(join(d, f), "x");
    await rejectsWith(prepareOutputDir(d, false), OutputExistsError, [d, "--force"]);
    await prepareOutputDir(d, true);
    assert.deepEqual(readdirSync(d), ["notes.txt"]);
  });

  test("the writer refuses an output folder that already holds a model", async () => {
    const src = readModel(FIXTURE_MODEL);
    const d = tmp();
    writeFileSync(join(d, "model.onnx"), "old");
    const data = new TensorData(src);
    await rejectsWith(PrunedModelWriter.create(src, data, d, new Set()), OutputExistsError, [join(d, "model.onnx")]);
    await rejectsWith(PrunedModelWriter.create(src, data, tmp(), new Set(["nope"])), InvalidArgumentError, ["nope"]);
    await data.close();
  });

  test("writeTensor refuses a wrong length or an undeclared tensor", async () => {
    const src = readModel(FIXTURE_MODEL);
    const d = tmp();
    const data = new TensorData(src);
    const writer = await PrunedModelWriter.create(src, data, d, new Set([Q_PROJ]));
    await rejectsWith(writer.writeTensor(Q_PROJ, new Uint8Array(511)), InvalidArgumentError, [Q_PROJ, "511", "512"]);
    await rejectsWith(writer.writeTensor("lm_head.MatMul.weight", new Uint8Array(1024000)), InvalidArgumentError, ["lm_head.MatMul.weight"]);
    await writer.abort();
    assert.deepEqual(readdirSync(d), []);
    await data.close();
  });

  test("finalize with a rewritten tensor never written is refused and leaves no model.onnx", async () => {
    const src = readModel(FIXTURE_MODEL);
    const d = tmp();
    const data = new TensorData(src);
    const k = "model.layers.0.attn.k_proj.MatMul.weight";
    const writer = await PrunedModelWriter.create(src, data, d, new Set([Q_PROJ, k]));
    await writer.writeTensor(Q_PROJ, new Uint8Array(512));
    await rejectsWith(writer.finalize(), InvalidArgumentError, [k, "never written"]);
    assert.equal(existsSync(join(d, "model.onnx")), false);
    assert.equal(existsSync(join(d, "model.onnx.data")), false);
    await writer.abort();
    assert.deepEqual(readdirSync(d), []);
    await data.close();
  });
});
