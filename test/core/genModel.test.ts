// The test-model generator: every flavour must load and run in onnxruntime, and the fused
// (contrib-op) graphs must compute the same function as the plain-ONNX ones from the same seed.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import * as ort from "onnxruntime-node";
import { ortTensor, tensorBits } from "../../services/core/src/runtime/ortTensor.js";
import { ModelProtoSchema, TensorProto_DataLocation, type ModelProto, type TensorProto } from "../../services/gen/onnx_pb.js";
import { readNpy } from "../../services/core/src/calib/npy.js";
import { InvalidArgumentError, OutputExistsError } from "../../services/core/src/errors.js";
import { floatToHalf, halfToFloatTable } from "../../services/core/src/onnx/dtype.js";
import { generateModel, type GenModelOptions, type GenModelResult } from "../../services/core/src/gen/genModel.js";

const L = 2;
const H = 64;
const SAMPLES = 3;
const SEQ = 32;
const IMAGE = 12;

let root = "";
before(() => {
  root = mkdtempSync(join(tmpdir(), "atvp-genmodel-"));
});
after(() => {
  if (root) rmSync(root, { recursive: true, force: true });
});

const cache = new Map<string, Promise<GenModelResult>>();
/** Generates (once) a small model of the given flavour; the seed is the default one for all. */
function gen(name: string, opts: Partial<GenModelOptions> = {}): Promise<GenModelResult> {
  let r = cache.get(name);
  if (!r) {
    r = generateModel({ outDir: join(root, name), layers: L, hidden: H, samples: SAMPLES, seqLen: SEQ, imageTokens: IMAGE, ...opts });
    cache.set(name, r);
  }
  return r;
}

interface CalibLine { inputs_embeds: string; image_mask: number[]; attention_mask?: number[] }

function calibLines(r: GenModelResult): CalibLine[] {
  return readFileSync(r.calibPath, "utf8").trim().split("\n").map((l) => JSON.parse(l) as CalibLine);
}

/** Sample `index` as float32 [T, H], its attention mask and where it came from. */
function sample(r: GenModelResult, index: number): { embeds: Float32Array; mask: number[]; line: CalibLine } {
  const line = calibLines(r)[index]!;
  const arr = readNpy(join(r.calibPath, "..", line.inputs_embeds));
  const embeds = arr.dtype === "float32" ? Float32Array.from(arr.data) : Float32Array.from(arr.data as Uint16Array, (h) => halfToFloatTable()[h]!);
  return { embeds, mask: line.attention_mask ?? new Array<number>(arr.shape[0]!).fill(1), line };
}

const sessions = new Map<string, Promise<ort.InferenceSession>>();
function session(r: GenModelResult): Promise<ort.InferenceSession> {
  let s = sessions.get(r.modelPath);
  if (!s) {
    s = ort.InferenceSession.create(r.modelPath);
    sessions.set(r.modelPath, s);
  }
  return s;
}

/** Runs the whole model on one sequence; returns float32 logits [T * vocab]. */
async function logits(r: GenModelResult, embeds: Float32Array, mask: number[]): Promise<Float32Array> {
  const s = await session(r);
  const T = mask.length;
  const fp16 = r.config.fp16;
  const feeds: Record<string, ort.Tensor> = {
    inputs_embeds: fp16
      ? ortTensor("float16", Uint16Array.from(embeds, (v) => floatToHalf(v)), [1, T, H])
      : new ort.Tensor("float32", embeds, [1, T, H]),
    attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask, (m) => BigInt(m)), [1, T]),
    position_ids: new ort.Tensor("int64", BigInt64Array.from({ length: T }, (_, i) => BigInt(i)), [1, T]),
  };
  for (const name of s.inputNames) {
    if (!name.startsWith("past_key_values.")) continue;
    const dims = [1, r.config.kvHeads, 0, r.config.headDim];
    feeds[name] = fp16 ? ortTensor("float16", new Uint16Array(0), dims) : new ort.Tensor("float32", new Float32Array(0), dims);
  }
  const out = (await s.run(feeds))["logits"]!;
  assert.deepEqual(out.dims, [1, T, r.config.vocab]);
  const data = tensorBits(out) as Float32Array | Uint16Array;
  return data instanceof Uint16Array ? Float32Array.from(data, (h) => halfToFloatTable()[h]!) : Float32Array.from(data);
}

function loadModel(r: GenModelResult): ModelProto {
  return fromBinary(ModelProtoSchema, readFileSync(r.modelPath));
}

function externalBytes(r: GenModelResult, t: TensorProto): Buffer {
  const get = (k: string) => t.externalData.find((e) => e.key === k)?.value;
  const offset = Number(get("offset"));
  return readFileSync(r.dataPath).subarray(offset, offset + Number(get("length")));
}

/** max |a - b| over positions [0, tokens), relative to max |b| there. */
function relDiff(a: Float32Array, b: Float32Array, tokens: number, vocab: number): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < tokens * vocab; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

function assertFinite(x: Float32Array, what: string): void {
  for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i]!)) assert.fail(`${what}: non-finite logit at ${i}`);
}

const FLAVOURS: Record<string, Partial<GenModelOptions>> = {
  "unfused-fp32": {},
  "unfused-fp16": { fp16: true },
  "fused-fp32-mha": { fused: true },
  "fused-fp16-mha": { fused: true, fp16: true },
  "fused-gqa": { fused: true, attention: "gqa", heads: 4, kvHeads: 2 },
  "fused-layernorm": { fused: true, norm: "layer" },
  "unfused-names-none": { nodeNames: "none" },
};

/** The plain-ONNX model each flavour must agree with (fp32, same seed, same shape options). */
const REFERENCE: Record<string, [string, Partial<GenModelOptions>]> = {
  "unfused-fp32": ["unfused-fp32", {}],
  "unfused-fp16": ["unfused-fp32", {}],
  "fused-fp32-mha": ["unfused-fp32", {}],
  "fused-fp16-mha": ["unfused-fp32", {}],
  "fused-gqa": ["unfused-gqa-ref", { heads: 4, kvHeads: 2 }],
  "fused-layernorm": ["unfused-layernorm-ref", { norm: "layer" }],
  "unfused-names-none": ["unfused-fp32", {}],
};

describe("generateModel: every flavour runs and matches the unfused reference", () => {
  for (const [name, opts] of Object.entries(FLAVOURS)) {
    test(name, async () => {
      const r = await gen(name, opts);
      const [refName, refOpts] = REFERENCE[name]!;
      const ref = await gen(refName, refOpts);
      const V = r.config.vocab;
      for (const index of [0, SAMPLES - 1]) {
        const { embeds, mask } = sample(r, index);
        const got = await logits(r, embeds, mask);
        assertFinite(got, `${name} sample ${index}`);
        const want = await logits(ref, sample(ref, index).embeds, mask);
        // Padded rows included: they must agree too (their keys exclude the padding in both).
        const tol = r.config.fp16 ? 1e-2 : 1e-4;
        const d = relDiff(got, want, mask.length, V);
        assert.ok(d < tol, `${name} sample ${index}: logits differ from ${refName} by ${d.toExponential(2)} (relative, tolerance ${tol})`);
        if (name === "unfused-names-none") assert.deepEqual(got, want);
      }
    });
  }
});

describe("generateModel: weights", () => {
  test("fused and unfused models hold the same linear weights, in external data", async () => {
    const unfused = await gen("unfused-fp32");
    const fused = await gen("fused-fp32-mha", FLAVOURS["fused-fp32-mha"]);
    assert.equal(unfused.numLinears, 7 * L + 1);
    assert.equal(fused.numLinears, 7 * L + 1);
    const ui = new Map(loadModel(unfused).graph!.initializer.map((t) => [t.name, t]));
    const fi = new Map(loadModel(fused).graph!.initializer.map((t) => [t.name, t]));
    assert.match(unfused.linearWeights[0]!, /^onnx::MatMul_\d+$/);
    assert.equal(fused.linearWeights[0], "model.layers.0.attn.q_proj.MatMul.weight");
    assert.equal(fused.linearWeights.at(-1), "lm_head.MatMul.weight");
    for (let i = 0; i < unfused.linearWeights.length; i++) {
      const u = ui.get(unfused.linearWeights[i]!)!;
      const f = fi.get(fused.linearWeights[i]!)!;
      assert.deepEqual(u.dims, f.dims);
      assert.ok(externalBytes(unfused, u).equals(externalBytes(fused, f)), `${u.name} != ${f.name}`);
    }
  });

  test("every initializer over 64 bytes is external, 4096-aligned, inside the data file", async () => {
    for (const name of ["unfused-fp32", "fused-fp16-mha"]) {
      const r = await gen(name, FLAVOURS[name]);
      const size = statSync(r.dataPath).size;
      assert.equal(size, r.dataFileBytes);
      let payload = 0;
      for (const t of loadModel(r).graph!.initializer) {
        const bytes = t.rawData.length;
        if (t.dataLocation !== TensorProto_DataLocation.EXTERNAL) {
          assert.ok(bytes <= 64, `${t.name} is inline with ${bytes} bytes`);
          continue;
        }
        const get = (k: string) => t.externalData.find((e) => e.key === k)?.value;
        assert.equal(get("location"), "model.onnx.data");
        const offset = Number(get("offset"));
        const length = Number(get("length"));
        assert.equal(offset % 4096, 0, `${t.name} offset ${offset}`);
        assert.equal(length, t.dims.reduce((a, b) => a * Number(b), 1) * (r.config.fp16 ? 2 : 4));
        assert.ok(offset + length <= size);
        payload += length;
      }
      assert.equal(payload, r.weightBytes);
    }
  });

  test("deterministic from the seed", async () => {
    const a = await gen("unfused-fp32");
    const b = await generateModel({ outDir: join(root, "again"), layers: L, hidden: H, samples: SAMPLES, seqLen: SEQ, imageTokens: IMAGE });
    const c = await generateModel({ outDir: join(root, "seed5"), layers: L, hidden: H, samples: SAMPLES, seqLen: SEQ, imageTokens: IMAGE, seed: 5 });
    assert.ok(readFileSync(a.dataPath).equals(readFileSync(b.dataPath)));
    assert.ok(readFileSync(a.modelPath).equals(readFileSync(b.modelPath)));
    assert.equal(readFileSync(a.calibPath, "utf8"), readFileSync(b.calibPath, "utf8"));
    assert.ok(readFileSync(join(root, "again", "calib", "s1.npy")).equals(readFileSync(join(root, "unfused-fp32", "calib", "s1.npy"))));
    assert.ok(!readFileSync(a.dataPath).equals(readFileSync(c.dataPath)));
  });
});

describe("generateModel: graph structure", () => {
  test("unfused: torch.onnx names, mask and rotary computed once outside the layers", async () => {
    const r = await gen("unfused-fp32");
    const nodes = loadModel(r).graph!.node;
    const names = new Set(nodes.map((n) => n.name));
    for (const n of ["/model/layers.0/self_attn/q_proj/MatMul", "/model/layers.1/mlp/down_proj/MatMul", "/model/layers.0/Add", "/model/layers.0/Add_1", "/lm_head/MatMul"]) {
      assert.ok(names.has(n), `missing node ${n}`);
    }
    assert.ok(nodes.every((n) => n.domain === ""));
    const softmax = nodes.filter((n) => n.opType === "Softmax");
    assert.equal(softmax.length, L);
    const maskOut = nodes.find((n) => n.opType === "Where" && n.name.startsWith("/model/attn_mask/"))!.output[0]!;
    assert.equal(nodes.filter((n) => n.input.includes(maskOut)).length, L, "every layer adds the shared mask");
    assert.equal(nodes.filter((n) => n.opType === "Gather" && n.name.startsWith("/model/rotary_emb/")).length, 2);
    assert.deepEqual(r.inputNames, ["inputs_embeds", "attention_mask", "position_ids"]);
    assert.deepEqual(r.outputNames, ["logits"]);
  });

  test("fused: genai builder layout, residual stream carried by SkipSimplifiedLayerNormalization", async () => {
    const r = await gen("fused-fp32-mha", FLAVOURS["fused-fp32-mha"]);
    const m = loadModel(r);
    assert.deepEqual(m.opsetImport.map((o) => `${o.domain}:${o.version}`), [":17", "com.microsoft:1"]);
    const byName = new Map(m.graph!.node.map((n) => [n.name, n]));
    const skip1 = byName.get("/model/layers.1/input_layernorm/SkipLayerNorm")!;
    assert.equal(skip1.opType, "SkipSimplifiedLayerNormalization");
    assert.equal(skip1.domain, "com.microsoft");
    assert.deepEqual(skip1.input.slice(0, 2), ["/model/layers.0/post_attention_layernorm/output_3", "/model/layers.0/mlp/down_proj/MatMul/output_0"]);
    const post0 = byName.get("/model/layers.0/post_attention_layernorm/SkipLayerNorm")!;
    assert.deepEqual(post0.input.slice(0, 2), ["inputs_embeds", "/model/layers.0/attn/o_proj/MatMul/output_0"]);
    assert.equal(byName.get("/model/layers.0/input_layernorm/LayerNorm")!.opType, "SimplifiedLayerNormalization");
    const final = byName.get(`/model/layers.${L}/final_norm_layernorm/SkipLayerNorm`)!;
    assert.deepEqual(final.input.slice(0, 2), [`/model/layers.${L - 1}/post_attention_layernorm/output_3`, `/model/layers.${L - 1}/mlp/down_proj/MatMul/output_0`]);
    const mha = byName.get("/model/layers.0/attn/MultiHeadAttention")!;
    assert.equal(mha.input[5], byName.get("/model/layers.1/attn/MultiHeadAttention")!.input[5], "one attention bias for all layers");
    assert.ok(byName.has("/model/layers.1/attn/q_rotary/RotaryEmbedding"));
    assert.equal(r.inputNames.length, 3 + 2 * L);
    assert.deepEqual(r.outputNames.slice(0, 2), ["logits", "present.0.key"]);

    const ln = loadModel(await gen("fused-layernorm", FLAVOURS["fused-layernorm"])).graph!.node;
    assert.equal(ln.filter((n) => n.opType === "SkipLayerNormalization").length, 2 * L);
    assert.equal(ln.filter((n) => n.opType === "SkipLayerNormalization")[0]!.input.length, 4, "gamma and beta");
    const gqa = loadModel(await gen("fused-gqa", FLAVOURS["fused-gqa"])).graph!.node;
    assert.equal(gqa.filter((n) => n.opType === "GroupQueryAttention").length, L);
  });

  test("nodeNames none leaves every node unnamed", async () => {
    const nodes = loadModel(await gen("unfused-names-none", FLAVOURS["unfused-names-none"])).graph!.node;
    assert.ok(nodes.length > 50);
    assert.ok(nodes.every((n) => n.name === ""));
  });
});

describe("generateModel: attention semantics", () => {
  for (const name of ["unfused-fp32", "fused-fp32-mha", "fused-gqa"]) {
    test(`${name}: causal (a later token does not change earlier logits)`, async () => {
      const r = await gen(name, FLAVOURS[name]);
      const { embeds, mask } = sample(r, 0);
      const base = await logits(r, embeds, mask);
      const t = 20;
      const changed = embeds.slice();
      for (let c = 0; c < H; c++) changed[t * H + c] = -changed[t * H + c]! + 0.5;
      const after = await logits(r, changed, mask);
      const V = r.config.vocab;
      assert.deepEqual(after.subarray(0, t * V), base.subarray(0, t * V));
      assert.ok(relDiff(after.subarray(t * V), base.subarray(t * V), SEQ - t, V) > 1e-2);
    });
  }

  for (const name of ["unfused-fp32", "fused-fp32-mha"]) {
    test(`${name}: a masked token is invisible to every other token`, async () => {
      const r = await gen(name, FLAVOURS[name]);
      const { embeds } = sample(r, 0);
      const mask = new Array<number>(SEQ).fill(1);
      const t = 5;
      mask[t] = 0;
      const base = await logits(r, embeds, mask);
      const changed = embeds.slice();
      for (let c = 0; c < H; c++) changed[t * H + c] = 3 * changed[t * H + c]!;
      const after = await logits(r, changed, mask);
      const V = r.config.vocab;
      const others = (x: Float32Array) => [...x.subarray(0, t * V), ...x.subarray((t + 1) * V)];
      const a = others(after);
      const b = others(base);
      for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) < 1e-5, `logit ${i} moved`);
    });
  }
});

describe("generateModel: calibration set", () => {
  test("samples, image runs and padding", async () => {
    const r = await gen("unfused-fp32");
    const lines = calibLines(r);
    assert.equal(lines.length, SAMPLES);
    const starts = new Set<number>();
    for (const [i, line] of lines.entries()) {
      assert.equal(line.inputs_embeds, `calib/s${i}.npy`);
      assert.equal(line.image_mask.length, SEQ);
      const first = line.image_mask.indexOf(1);
      assert.ok(first > 0);
      assert.deepEqual(line.image_mask.slice(first, first + IMAGE), new Array<number>(IMAGE).fill(1));
      assert.equal(line.image_mask.reduce((a, b) => a + b, 0), IMAGE, "one contiguous run");
      starts.add(first);
      const arr = readNpy(join(r.calibPath, "..", line.inputs_embeds));
      assert.equal(arr.dtype, "float32");
      assert.deepEqual(arr.shape, [SEQ, H]);
      // Image tokens must stand out from text tokens.
      const norm = (t: number) => Math.hypot(...arr.data.subarray(t * H, (t + 1) * H));
      const imageNorm = norm(first);
      const textNorm = norm(first === 1 ? SEQ - 3 : 0);
      assert.ok(imageNorm > 2 * textNorm, `image ${imageNorm} vs text ${textNorm}`);
      if (i < SAMPLES - 1) assert.equal(line.attention_mask, undefined);
    }
    assert.ok(starts.size > 1, "image offsets vary between samples");
    const last = lines.at(-1)!;
    assert.deepEqual(last.attention_mask!.slice(-3), [1, 0, 0]);
    assert.deepEqual(last.image_mask.slice(-2), [0, 0]);
    const fp16 = await gen("unfused-fp16", FLAVOURS["unfused-fp16"]);
    assert.equal(readNpy(join(fp16.calibPath, "..", "calib/s0.npy")).dtype, "float16");
  });
});

describe("generateModel: options", () => {
  test("bad options name the offending option", async () => {
    const base = { outDir: join(root, "bad"), layers: 1, hidden: 64 };
    await assert.rejects(generateModel({ ...base, heads: 3 }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "heads");
    await assert.rejects(generateModel({ ...base, fused: true, heads: 4, kvHeads: 2 }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "kvHeads");
    await assert.rejects(generateModel({ ...base, layers: 0 }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "layers");
    await assert.rejects(generateModel({ ...base, seqLen: 10, imageTokens: 9 }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "imageTokens");
  });

  test("refuses a non-empty output directory unless forced", async () => {
    const dir = join(root, "occupied");
    await generateModel({ outDir: dir, layers: 1, hidden: 32, samples: 1, seqLen: 8, imageTokens: 2 });
    writeFileSync(join(dir, "note.txt"), "x");
    await assert.rejects(generateModel({ outDir: dir, layers: 1, hidden: 32 }), OutputExistsError);
    const r = await generateModel({ outDir: dir, layers: 1, hidden: 32, samples: 1, seqLen: 8, imageTokens: 2, force: true });
    assert.equal(r.config.heads, 2);
    assert.equal(r.config.intermediate, 96);
  });
});
