// DESIGN.md §5 through pruneModel: every bad input gets a typed error that names the file,
// tensor, layer or JSONL line, and a failed job leaves nothing in the output folder that could
// pass for a result (no model.onnx, model.onnx.data, report.json, nor their .partial files).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { create } from "@bufbuild/protobuf";
import { StringStringEntryProtoSchema, TensorProto_DataType as DT } from "../../services/gen/onnx_pb.js";
import {
  AtvpError,
  CalibrationError,
  ExternalDataError,
  InvalidArgumentError,
  NumericError,
  OnnxFormatError,
  OutputExistsError,
  OutputLockedError,
  OutputPathError,
  UnsupportedTypeError,
  type AtvpErrorCode,
} from "../../services/core/src/errors.js";
import { generateModel, type GenModelResult } from "../../services/core/src/gen/genModel.js";
import { readNpy, writeNpy } from "../../services/core/src/calib/npy.js";
import { readModel, writeModel } from "../../services/core/src/onnx/modelFile.js";
import { TensorData } from "../../services/core/src/onnx/tensorData.js";
import { toFloat32 } from "../../services/core/src/onnx/dtype.js";
import { DATA_FILE, MODEL_FILE, PARTIAL_SUFFIX, REPORT_FILE } from "../../services/core/src/onnx/outputDir.js";
import { pruneModel } from "../../services/core/src/pipeline/pruneModel.js";
import type { PruneSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { tempDir } from "../support/fixtures.js";
import { spawnSync } from "node:child_process";
import { availableParallelism, hostname } from "node:os";
import { fsErrorToTyped } from "../../services/core/src/io/fsErrors.js";
import { acquireOutputLock, lockPathOf } from "../../services/core/src/onnx/outputLock.js";

const tmp = tempDir("badinput");
after(() => tmp.cleanup());

let gen: GenModelResult;
/** The first calibration sample's .npy (absolute): [24, 64] float32, image tokens 7..16. */
let npy0: string;
let npy1: string;

before(async () => {
  gen = await generateModel({ outDir: join(tmp.path, "model"), layers: 2, hidden: 64, samples: 3, seqLen: 24, imageTokens: 10, seed: 5 });
  npy0 = resolve(join(tmp.path, "model"), gen.samples[0]!.file);
  npy1 = resolve(join(tmp.path, "model"), gen.samples[1]!.file);
});

const OUR_FILES = [MODEL_FILE, DATA_FILE, REPORT_FILE].flatMap((f) => [f, f + PARTIAL_SUFFIX]);

/** Nothing that looks like (part of) a result in `out`; other files may stay. */
function assertNoOutput(out: string): void {
  if (!existsSync(out)) return;
  const left = readdirSync(out).filter((f) => OUR_FILES.includes(f));
  assert.deepEqual(left, [], `a failed job left ${left.join(", ")} in ${out}`);
}

let outCounter = 0;
function freshOut(): string {
  return join(tmp.path, "out", `o${outCounter++}`);
}

type ErrorClass = new (...args: never[]) => AtvpError;

/**
 * Runs pruneModel on `spec` (defaults: the generated model and calibration set, ATV at 50%),
 * expects it to fail with `cls`/`code` and a message naming every `mentions` entry, and checks
 * the output folder holds no result.
 */
async function expectFailure(
  spec: Partial<PruneSpec>,
  cls: ErrorClass,
  code: AtvpErrorCode,
  mentions: (string | RegExp)[],
): Promise<AtvpError> {
  const out = spec.out ?? freshOut();
  let caught: unknown;
  await assert.rejects(
    pruneModel({ model: gen.modelPath, calib: gen.calibPath, method: "atv", sparsity: 0.5, threads: 2, out, ...spec } as PruneSpec),
    (err: unknown) => {
      caught = err;
      return true;
    },
  );
  const err = caught as AtvpError;
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${(err as Error)?.name}: ${(err as Error)?.message}`);
  assert.equal(err.code, code);
  for (const m of mentions) {
    if (typeof m === "string") assert.ok(err.message.includes(m), `message should name ${JSON.stringify(m)}: ${err.message}`);
    else assert.match(err.message, m);
  }
  assertNoOutput(out);
  return err;
}

function caseDir(name: string): string {
  const d = join(tmp.path, "cases", name);
  mkdirSync(d, { recursive: true });
  return d;
}

/** Writes a calibration JSONL (objects are stringified, strings written as they are). */
function writeCalib(name: string, lines: (object | string)[]): string {
  const p = join(caseDir("calib"), `${name}.jsonl`);
  writeFileSync(p, lines.map((l) => (typeof l === "string" ? l : JSON.stringify(l))).join("\n") + "\n");
  return p;
}

function imageMask(tokens: number, start: number, count: number): number[] {
  return Array.from({ length: tokens }, (_, t) => (t >= start && t < start + count ? 1 : 0));
}

const goodLine = () => ({ inputs_embeds: npy0, image_mask: imageMask(24, 7, 10) });

describe("model files", () => {
  test("a JSON text file given as the model → OnnxFormatError naming the file", async () => {
    const p = join(caseDir("json"), "model.onnx");
    writeFileSync(p, JSON.stringify({ model: "not onnx", layers: [1, 2, 3] }, null, 2));
    await expectFailure({ model: p }, OnnxFormatError, "ONNX_FORMAT", [p, /truncated or not ONNX/]);
  });

  test("random bytes → OnnxFormatError naming the file", async () => {
    const p = join(caseDir("random"), "model.onnx");
    let x = 0x9e3779b9;
    const bytes = new Uint8Array(8192).map(() => {
      x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
      return x & 0xff;
    });
    writeFileSync(p, bytes);
    await expectFailure({ model: p }, OnnxFormatError, "ONNX_FORMAT", [p]);
  });

  test("a truncated model.onnx (first half) → OnnxFormatError naming the file", async () => {
    const full = readFileSync(gen.modelPath);
    const d = caseDir("truncated");
    const p = join(d, "model.onnx");
    writeFileSync(p, full.subarray(0, Math.floor(full.length / 2)));
    copyFileSync(gen.dataPath, join(d, "model.onnx.data"));
    await expectFailure({ model: p }, OnnxFormatError, "ONNX_FORMAT", [p, /truncated/]);
  });

  test("a model path that does not exist → OnnxFormatError naming it", async () => {
    const p = join(tmp.path, "cases", "nowhere", "model.onnx");
    await expectFailure({ model: p }, OnnxFormatError, "ONNX_FORMAT", [p, /not found/]);
  });

  test("missing external data file → ExternalDataError naming a tensor and the data file", async () => {
    const d = caseDir("nodata");
    const p = join(d, "model.onnx");
    copyFileSync(gen.modelPath, p);
    await expectFailure({ model: p }, ExternalDataError, "EXTERNAL_DATA", [join(d, "model.onnx.data"), /tensor "[^"]+"/, /does not exist/]);
  });

  test("external data file shorter than the model says → ExternalDataError naming the tensor and file", async () => {
    const d = caseDir("shortdata");
    const p = join(d, "model.onnx");
    copyFileSync(gen.modelPath, p);
    const data = readFileSync(gen.dataPath);
    writeFileSync(join(d, "model.onnx.data"), data.subarray(0, data.length - 5000));
    await expectFailure({ model: p }, ExternalDataError, "EXTERNAL_DATA", [join(d, "model.onnx.data"), /tensor "[^"]+"/, /too short/]);
  });

  test("a block weight stored as DOUBLE → UnsupportedTypeError naming the weight and its node", async () => {
    // Rewrite layer 0's o_proj weight as float64: same values, its bytes appended to a copy
    // of the data file, the initializer's data_type and external range updated to match.
    const d = caseDir("double");
    const loaded = readModel(gen.modelPath);
    const name = gen.linearWeights[3]!;
    const t = loaded.model.graph!.initializer.find((i) => i.name === name)!;
    assert.ok(t, `initializer ${name}`);
    const src = new TensorData(loaded);
    const values = toFloat32(await src.read(t), t.dataType, name);
    await src.close();
    const doubles = Float64Array.from(values);
    const data = readFileSync(gen.dataPath);
    const offset = Math.ceil(data.length / 4096) * 4096;
    const out = new Uint8Array(offset + doubles.byteLength);
    out.set(data, 0);
    out.set(new Uint8Array(doubles.buffer), offset);
    writeFileSync(join(d, "model.onnx.data"), out);
    t.dataType = DT.DOUBLE;
    t.externalData = [
      create(StringStringEntryProtoSchema, { key: "location", value: "model.onnx.data" }),
      create(StringStringEntryProtoSchema, { key: "offset", value: String(offset) }),
      create(StringStringEntryProtoSchema, { key: "length", value: String(doubles.byteLength) }),
    ];
    const p = join(d, "model.onnx");
    await writeModel(p, loaded.model);
    const err = await expectFailure({ model: p, method: "magnitude", calib: undefined }, UnsupportedTypeError, "UNSUPPORTED_TYPE", [name, "DOUBLE", "layers.0"]);
    assert.equal(err.subject, name);
    await expectFailure({ model: p }, UnsupportedTypeError, "UNSUPPORTED_TYPE", [name, "DOUBLE"]);
  });
});

describe("calibration samples that do not fit the model", () => {
  test("hidden size mismatch → CalibrationError naming the JSONL line and the .npy file", async () => {
    const d = caseDir("hidden32");
    const npy = join(d, "h32.npy");
    writeNpy(npy, { dtype: "float32", shape: [24, 32], data: new Float32Array(24 * 32).fill(0.5) });
    const calib = writeCalib("hidden", [goodLine(), { inputs_embeds: npy, image_mask: imageMask(24, 5, 10) }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`, npy, /hidden size 32/, /64/]);
  });

  test("a sample with no text tokens (image_mask all 1) under ATV → CalibrationError naming the line", async () => {
    const calib = writeCalib("alltext", [goodLine(), goodLine(), { inputs_embeds: npy1, image_mask: new Array(24).fill(1) }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:3`, /no text tokens/]);
  });

  test("NaN in the activations → NumericError naming the block and the sample; no model.onnx", async () => {
    const d = caseDir("nan");
    const a = readNpy(npy1);
    (a.data as Float32Array)[3] = NaN; // token 0: every later token attends to it
    const npy = join(d, "nan.npy");
    writeNpy(npy, a);
    const calib = writeCalib("nan", [goodLine(), { inputs_embeds: npy, image_mask: imageMask(24, 5, 10) }]);
    const out = freshOut();
    await expectFailure({ calib, out }, NumericError, "NUMERIC", ["layers.0", /sample 1 \(line 2\)/, /NaN or Inf/]);
    assert.ok(!existsSync(out), "the failed run removes the --out folder it created");
  });

  test("Inf in the embeddings (Wanda) → NumericError naming the block and the sample", async () => {
    const d = caseDir("inf");
    const a = readNpy(npy0);
    (a.data as Float32Array)[64 * 2 + 5] = Infinity;
    const npy = join(d, "inf.npy");
    writeNpy(npy, a);
    const calib = writeCalib("inf", [{ inputs_embeds: npy, image_mask: imageMask(24, 7, 10) }, goodLine()]);
    await expectFailure({ calib, method: "wanda" }, NumericError, "NUMERIC", ["layers.0", /sample 0 \(line 1\)/, /NaN or Inf/]);
  });

  test("a failed re-run with force removes the earlier result instead of leaving it looking current", async () => {
    const out = freshOut();
    await pruneModel({ model: gen.modelPath, calib: gen.calibPath, method: "atv", sparsity: 0.5, threads: 2, out });
    assert.ok(existsSync(join(out, MODEL_FILE)) && existsSync(join(out, REPORT_FILE)));
    const a = readNpy(npy0);
    (a.data as Float32Array)[0] = NaN;
    const npy = join(caseDir("nan-force"), "nan.npy");
    writeNpy(npy, a);
    const calib = writeCalib("nan-force", [{ inputs_embeds: npy, image_mask: imageMask(24, 7, 10) }]);
    await expectFailure({ calib, out, force: true }, NumericError, "NUMERIC", ["layers.0", /line 1/]);
  });

  test("a sample with no attended tokens (attention_mask all 0) → CalibrationError naming the line", async () => {
    const calib = writeCalib("unattended", [goodLine(), { inputs_embeds: npy1, attention_mask: new Array(24).fill(0) }]);
    await expectFailure({ calib, method: "wanda" }, CalibrationError, "CALIBRATION", [`${calib}:2`, /no attended tokens/]);
  });

  test("samples with no image tokens are not an error: ATV keeps k = 0 visual tokens", async () => {
    const calib = writeCalib("noimage", [{ inputs_embeds: npy0 }, { inputs_embeds: npy1 }]);
    const out = freshOut();
    const report = await pruneModel({ model: gen.modelPath, calib, method: "atv", sparsity: 0.5, threads: 2, out });
    for (const b of report.blocks) assert.deepEqual(b.k, [0, 0]);
    assert.ok(existsSync(join(out, MODEL_FILE)));
  });
});

describe("options", () => {
  for (const sparsity of [-0.1, 1, NaN]) {
    test(`sparsity ${sparsity} → InvalidArgumentError naming sparsity`, async () => {
      const err = await expectFailure({ sparsity }, InvalidArgumentError, "INVALID_ARGUMENT", ["sparsity", /\[0, 1\)/]);
      assert.equal(err.subject, "sparsity");
    });
  }

  test("--include matching no linear → InvalidArgumentError naming the flag and the pattern, not a 0-weight success", async () => {
    await expectFailure({ include: ["q_prjo"] }, InvalidArgumentError, "INVALID_ARGUMENT", ["--include", '"q_prjo"', /matches no linear layer/]);
  });

  test("--exclude matching no linear, or excluding every linear → InvalidArgumentError", async () => {
    await expectFailure({ exclude: ["nothing_like_this"] }, InvalidArgumentError, "INVALID_ARGUMENT", ["--exclude", /matches no linear layer/]);
    await expectFailure({ exclude: ["."] }, InvalidArgumentError, "INVALID_ARGUMENT", [/leave no linear layer to prune/]);
  });

  test("--threads above the machine's cores is clamped with a warning naming the flag", async () => {
    const warnings: string[] = [];
    const report = await pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.5, threads: 100000, out: freshOut() }, { warn: (m) => warnings.push(m) });
    assert.equal(report.totals.threads, availableParallelism());
    assert.ok(warnings.some((w) => /--threads 100000 is more than this machine's \d+ cores/.test(w)), warnings.join("\n"));
  });

  test("pattern 3:5 on a model whose inputs are 64 wide → InvalidArgumentError naming the layer, before any work", async () => {
    const out = freshOut();
    const err = await expectFailure({ pattern: "3:5", sparsity: undefined, out }, InvalidArgumentError, "INVALID_ARGUMENT", [/input dimension 64/, /3:5/, "layers.0"]);
    assert.equal(err.subject, gen.linearWeights[0]);
    assert.ok(!existsSync(out), "the job must fail before it creates the output folder");
    await expectFailure({ pattern: "3:5", sparsity: undefined, method: "magnitude", magnitudeScope: "column", calib: undefined }, InvalidArgumentError, "INVALID_ARGUMENT", [err.subject]);
    // With --force over an earlier result, the refused job leaves that result alone.
    const done = freshOut();
    await pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.5, out: done });
    const before = readFileSync(join(done, DATA_FILE));
    await assert.rejects(pruneModel({ model: gen.modelPath, method: "magnitude", magnitudeScope: "column", pattern: "3:5", out: done, force: true }), InvalidArgumentError);
    assert.ok(before.equals(readFileSync(join(done, DATA_FILE))) && existsSync(join(done, MODEL_FILE)) && existsSync(join(done, REPORT_FILE)));
  });

  for (const pattern of ["2-4", "4:2", "0:4", "n:m", ""]) {
    test(`bad pattern text ${JSON.stringify(pattern)} → InvalidArgumentError naming pattern`, async () => {
      const err = await expectFailure({ pattern }, InvalidArgumentError, "INVALID_ARGUMENT", ["pattern"]);
      assert.equal(err.subject, "pattern");
    });
  }

  test("--pattern 1:4 with --sparsity 0.5 is refused", async () => {
    const err = await expectFailure({ pattern: "1:4", sparsity: 0.5 }, InvalidArgumentError, "INVALID_ARGUMENT", ["sparsity", "1:4", "0.25"]);
    assert.equal(err.subject, "sparsity");
  });

  for (const method of ["atv", "wanda"] as const) {
    test(`method ${method} without calib → InvalidArgumentError naming calib`, async () => {
      const err = await expectFailure({ method, calib: undefined }, InvalidArgumentError, "INVALID_ARGUMENT", ["calib", method]);
      assert.equal(err.subject, "calib");
    });
  }
});

describe("output folder", () => {
  test("--force into the source model's own folder → OutputPathError before anything is deleted; the model is intact", async () => {
    const src = caseDir("own-folder");
    for (const f of readdirSync(join(tmp.path, "model"))) if (f.startsWith("model.onnx")) copyFileSync(join(tmp.path, "model", f), join(src, f));
    const before = readdirSync(src).map((f) => [f, readFileSync(join(src, f))] as const);
    const model = join(src, MODEL_FILE);
    for (const method of ["magnitude", "atv"] as const) {
      // Not expectFailure: the folder holds the model's own files, which must stay.
      await assert.rejects(
        pruneModel({ model, calib: gen.calibPath, method, sparsity: 0.5, out: src, force: true }),
        (err: unknown) => err instanceof OutputPathError && err.subject === src && /holds an input of the job/.test(err.message) && err.message.includes(MODEL_FILE),
      );
    }
    for (const [f, bytes] of before) assert.ok(readFileSync(join(src, f)).equals(bytes), `${f} untouched`);
  });

  test("an --out folder holding the calibration set or a .npy → OutputPathError naming it, even with --force", async () => {
    const d = caseDir("out-holds-calib");
    const npy = join(d, "s.npy");
    copyFileSync(npy0, npy);
    const calib = join(d, "calib.jsonl");
    writeFileSync(calib, JSON.stringify({ inputs_embeds: "s.npy", image_mask: imageMask(24, 7, 10) }) + "\n");
    await expectFailure({ calib, out: d, force: true }, OutputPathError, "OUTPUT_PATH", [d, "calib.jsonl"]);
    const calib2 = writeCalib("npy-elsewhere", [{ inputs_embeds: npy, image_mask: imageMask(24, 7, 10) }]);
    await expectFailure({ calib: calib2, out: d, force: true }, OutputPathError, "OUTPUT_PATH", [d]);
    assert.ok(existsSync(npy) && existsSync(calib));
  });

  test("--out under /proc → OutputPathError before any work, nothing created", async () => {
    await expectFailure({ out: "/proc/atvp-x" }, OutputPathError, "OUTPUT_PATH", ["/proc/atvp-x", /special file system/]);
    // Before the model is even read: a missing model is not what is reported.
    await expectFailure({ out: "/proc/atvp-x", model: join(tmp.path, "no-such-model.onnx") }, OutputPathError, "OUTPUT_PATH", ["/proc/atvp-x"]);
    assert.ok(!existsSync("/proc/atvp-x"));
  });

  test("--out below a regular file → OutputPathError (ENOTDIR) naming the file", async () => {
    const file = join(caseDir("notdir"), "plain.txt");
    writeFileSync(file, "x");
    const err = await expectFailure({ out: join(file, "sub", "out") }, OutputPathError, "OUTPUT_PATH", [file, /ENOTDIR/]);
    assert.equal((err as OutputPathError).errno, "ENOTDIR");
  });

  test("ENOSPC (a real one, from /dev/full) becomes an OutputPathError naming the file", async () => {
    let raw: unknown;
    try {
      writeFileSync("/dev/full", "x");
    } catch (err) {
      raw = err;
    }
    assert.equal((raw as NodeJS.ErrnoException).code, "ENOSPC");
    // A failed write(2) names no path: the caller's (the output file) is used.
    const typed = fsErrorToTyped(raw, "/dev/full");
    assert.ok(typed instanceof OutputPathError);
    assert.equal(typed.errno, "ENOSPC");
    assert.equal(typed.subject, "/dev/full");
    assert.match(typed.message, /no space left.*free some space/);
  });

  test("a folder locked by a live process → OutputLockedError naming it; a stale lock (dead pid) is taken over", async () => {
    const out = freshOut();
    const held = await acquireOutputLock(out, "job-elsewhere");
    try {
      // The lock names this process, which is alive: a second writer must wait.
      const err = await expectFailure({ out, method: "magnitude", calib: undefined }, OutputLockedError, "OUTPUT_LOCKED", [out, `pid ${process.pid}`, "job-elsewhere"]);
      assert.match((err as OutputLockedError).holder, /job-elsewhere/);
    } finally {
      await held.release();
    }
    assert.ok(!existsSync(lockPathOf(out)), "release removes the lock file");
    // A lock left by a process that is gone (pid of an exited child).
    const dead = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
    writeFileSync(lockPathOf(out), JSON.stringify({ pid: Number(dead.stdout), host: hostname(), since: "then" }));
    const report = await pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.5, out });
    assert.ok(report.totals.pruned > 0);
    assert.ok(!existsSync(lockPathOf(out)), "the lock is released after the run");
    // Our own pid, written before this process started: an earlier process that had the same pid.
    writeFileSync(lockPathOf(out), JSON.stringify({ pid: process.pid, host: hostname(), since: "2020-01-01T00:00:00.000Z" }));
    await pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.5, out, force: true });
    assert.ok(!existsSync(lockPathOf(out)));
  });

  test("an existing non-empty folder → OutputExistsError unless force; force writes and keeps other files", async () => {
    const out = freshOut();
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, "notes.txt"), "mine\n");
    await expectFailure({ out, method: "magnitude", calib: undefined }, OutputExistsError, "OUTPUT_EXISTS", [out, /--force/]);
    assert.equal(readFileSync(join(out, "notes.txt"), "utf8"), "mine\n");
    const report = await pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.5, out, force: true });
    assert.ok(report.totals.pruned > 0);
    assert.deepEqual(readdirSync(out).sort(), [MODEL_FILE, DATA_FILE, "notes.txt", REPORT_FILE].sort());
    assert.equal(readFileSync(join(out, "notes.txt"), "utf8"), "mine\n");
  });
});

describe("failures mid-job", () => {
  test("a failure while blocks are being written removes model.onnx.data.partial", async () => {
    const out = freshOut();
    let sawPartial = false;
    await assert.rejects(
      pruneModel({ model: gen.modelPath, calib: gen.calibPath, method: "wanda", sparsity: 0.5, threads: 2, out }, {
        onEvent: (e) => {
          if (e.type === "block_started" && e.block === 1) {
            sawPartial = existsSync(join(out, DATA_FILE + PARTIAL_SUFFIX));
            throw new Error("listener failed");
          }
        },
      }),
      /listener failed/,
    );
    assert.ok(sawPartial, "the data file is written under its .partial name while the job runs");
    assert.ok(!existsSync(out), "the output folder the failed job created is removed");
  });

  test("a failure writing report.json leaves no model.onnx behind", async () => {
    const out = freshOut();
    await assert.rejects(
      pruneModel({ model: gen.modelPath, method: "magnitude", sparsity: 0.5, out }, {
        // A folder where report.json.partial goes makes writing the report fail after finalize.
        onEvent: (e) => {
          if (e.type === "block_finished" && e.block === gen.config.layers - 1) mkdirSync(join(out, REPORT_FILE + PARTIAL_SUFFIX));
        },
      }),
      (err: unknown) => err instanceof OutputPathError && err.errno === "EISDIR" && err.subject === join(out, REPORT_FILE + PARTIAL_SUFFIX),
    );
    assert.deepEqual(readdirSync(out), [REPORT_FILE + PARTIAL_SUFFIX], "only the obstacle the test made may stay");
  });
});

describe("calibration JSONL", () => {
  test("a misspelled key (imagemask) → CalibrationError naming the line and the closest known key", async () => {
    const { image_mask: mask, ...rest } = goodLine();
    const calib = writeCalib("typo", [goodLine(), { ...rest, imagemask: mask }]);
    const err = await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`, '"imagemask"', /did you mean "image_mask"/]);
    assert.equal(err.subject, `${calib}:2`);
    const far = writeCalib("unknown", [{ ...goodLine(), caption: "a cat" }]);
    await expectFailure({ calib: far }, CalibrationError, "CALIBRATION", [`${far}:1`, '"caption"', /may have input_ids, inputs_embeds, attention_mask, image_mask/]);
  });

  test("invalid JSON on line 3 → CalibrationError naming :3", async () => {
    const calib = writeCalib("badjson", [goodLine(), goodLine(), '{"inputs_embeds": "s.npy", image_mask: [0, 1]', goodLine()]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:3`, /not valid JSON/]);
  });

  test("a line that is JSON but not an object → names the line", async () => {
    const calib = writeCalib("array", [goodLine(), "[1, 2, 3]"]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`]);
  });

  test("a line with neither input_ids nor inputs_embeds → names the line", async () => {
    const calib = writeCalib("neither", [goodLine(), { image_mask: [0, 1, 1, 0] }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`, "input_ids", "inputs_embeds"]);
  });

  test("an image_mask of the wrong length → names the line and image_mask", async () => {
    const calib = writeCalib("masklen", [{ inputs_embeds: npy0, image_mask: [0, 1, 1, 0] }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:1`, "image_mask", "24"]);
  });

  test("an attention_mask of the wrong length → names the line and attention_mask", async () => {
    const calib = writeCalib("attnlen", [goodLine(), { inputs_embeds: npy0, attention_mask: [1, 1] }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`, "attention_mask"]);
  });

  test("an input_ids sample for an inputs_embeds model → names the line", async () => {
    const calib = writeCalib("ids", [goodLine(), { input_ids: [1, 2, 3, 4], image_mask: [0, 1, 1, 0] }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`, "inputs_embeds", "input_ids"]);
  });

  test("a missing .npy file → names the line and the file", async () => {
    const calib = writeCalib("nonpy", [goodLine(), { inputs_embeds: "missing/s9.npy" }]);
    const npy = join(tmp.path, "cases", "calib", "missing", "s9.npy");
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:2`, npy]);
  });

  test("a .npy that is not a .npy → names the line and the file", async () => {
    const bad = join(caseDir("notnpy"), "x.npy");
    writeFileSync(bad, "hello");
    const calib = writeCalib("notnpy", [{ inputs_embeds: bad }]);
    await expectFailure({ calib }, CalibrationError, "CALIBRATION", [`${calib}:1`, bad]);
  });

  test("nsamples larger than the file → CalibrationError naming the file and the counts", async () => {
    const err = await expectFailure({ nsamples: 10 }, CalibrationError, "CALIBRATION", [gen.calibPath, "10", "3"]);
    assert.equal(err.subject, gen.calibPath);
  });

  test("an empty calibration file and a missing one → CalibrationError naming the file", async () => {
    const empty = writeCalib("empty", ["", "  "]);
    await expectFailure({ calib: empty }, CalibrationError, "CALIBRATION", [empty, /no samples/]);
    const missing = join(tmp.path, "cases", "calib", "absent.jsonl");
    await expectFailure({ calib: missing, method: "wanda" }, CalibrationError, "CALIBRATION", [missing]);
  });
});
