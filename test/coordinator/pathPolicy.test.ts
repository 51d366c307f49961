// What a submitted job may touch: paths resolve inside the allowed roots after `..` and
// symbolic links; field problems in a JobSpec become INVALID_ARGUMENT naming the field.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, realpathSync, symlinkSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { status } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { JobSpecSchema, type JobSpec } from "../../services/gen/atvprune/v1/job_pb.js";
import { RpcError } from "../../services/rpc/status.js";
import { checkExternalDataPaths, checkJobFiles, resolveAllowedPath, resolveJobPaths, resolveWorkDir, validateJobSpec } from "../../services/rpc/pathPolicy.js";
import { toPruneSpec } from "../../services/rpc/jobSpec.js";
import { generateModel } from "../../services/core/src/gen/genModel.js";
import { DEFAULT_SPARSITY, resolveSpec } from "../../services/core/src/pipeline/pruneSpec.js";
import { tempDir } from "../support/fixtures.js";

const tmp = tempDir("paths");
after(() => tmp.cleanup());

// base/root is allowed; base/outside is not.
const base = realpathSync(tmp.path);
const root = join(base, "root");
const outside = join(base, "outside");
mkdirSync(join(root, "models"), { recursive: true });
mkdirSync(outside, { recursive: true });
writeFileSync(join(root, "models", "model.onnx"), "m");
writeFileSync(join(outside, "secret.onnx"), "s");
symlinkSync(join(outside, "secret.onnx"), join(root, "link-to-secret.onnx"));
symlinkSync(outside, join(root, "link-to-outside"));
symlinkSync(join(root, "models"), join(root, "link-to-models"));
symlinkSync(join(outside, "missing-dir"), join(root, "dangling"));
writeFileSync(join(root, "a-file"), "f");

const roots = [root];

function rejects(fn: () => unknown, code: status, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof RpcError, `expected an RpcError, got ${String(e)}`);
    assert.equal(e.code, code, `${status[e.code]}: ${e.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

describe("resolveAllowedPath", () => {
  test("a file inside the root resolves to its real absolute path", () => {
    assert.equal(resolveAllowedPath(join(root, "models", "model.onnx"), roots, "spec.model", { mustExist: true }), join(root, "models", "model.onnx"));
  });

  test("a relative path resolves against the current directory", () => {
    const rel = relative(process.cwd(), join(root, "models", "model.onnx"));
    assert.equal(resolveAllowedPath(rel, roots, "spec.model", { mustExist: true }), join(root, "models", "model.onnx"));
  });

  test("a symlink inside the root that stays inside is followed and allowed", () => {
    assert.equal(resolveAllowedPath(join(root, "link-to-models", "model.onnx"), roots, "spec.model", { mustExist: true }), join(root, "models", "model.onnx"));
  });

  test("root/../x is outside: PERMISSION_DENIED naming the field, the path and the roots", () => {
    const escape = join(root, "..", "outside", "secret.onnx");
    const given = `${root}/../outside/secret.onnx`;
    rejects(() => resolveAllowedPath(given, roots, "spec.model", { mustExist: true }), status.PERMISSION_DENIED,
      new RegExp(`^spec\\.model: ${given.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")} is outside the allowed roots \\(${root.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\)$`));
    rejects(() => resolveAllowedPath(escape, roots, "spec.model", { mustExist: true }), status.PERMISSION_DENIED, /outside the allowed roots/);
  });

  test("a sibling whose name starts with the root's is not inside it", () => {
    mkdirSync(`${root}-evil`, { recursive: true });
    rejects(() => resolveAllowedPath(`${root}-evil`, roots, "spec.out", { mustExist: false }), status.PERMISSION_DENIED, /outside the allowed roots/);
  });

  test("a symlink inside the root pointing outside is refused (file and directory)", () => {
    rejects(() => resolveAllowedPath(join(root, "link-to-secret.onnx"), roots, "spec.model", { mustExist: true }), status.PERMISSION_DENIED, /^spec\.model: .*link-to-secret\.onnx is outside/);
    rejects(() => resolveAllowedPath(join(root, "link-to-outside", "secret.onnx"), roots, "spec.calib", { mustExist: true }), status.PERMISSION_DENIED, /^spec\.calib: /);
  });

  test("an output directory that does not exist yet under the root is allowed", () => {
    assert.equal(resolveAllowedPath(join(root, "runs", "new", "out"), roots, "spec.out", { mustExist: false }), join(root, "runs", "new", "out"));
    assert.equal(resolveAllowedPath(join(root, "link-to-models", "pruned"), roots, "spec.out", { mustExist: false }), join(root, "models", "pruned"));
  });

  test("a not-yet-existing output under a symlinked-out parent is refused", () => {
    rejects(() => resolveAllowedPath(join(root, "link-to-outside", "new-out"), roots, "spec.out", { mustExist: false }), status.PERMISSION_DENIED, /^spec\.out: .*outside the allowed roots/);
    rejects(() => resolveAllowedPath(join(root, "link-to-outside", "a", "b"), roots, "spec.out", { mustExist: false }), status.PERMISSION_DENIED, /^spec\.out: /);
  });

  test("a dangling symlink is refused: where it would land cannot be checked", () => {
    rejects(() => resolveAllowedPath(join(root, "dangling", "out"), roots, "spec.out", { mustExist: false }), status.PERMISSION_DENIED, /^spec\.out: .*dangling symbolic link/);
  });

  test("an output under a regular file is INVALID_ARGUMENT naming the file", () => {
    rejects(() => resolveAllowedPath(join(root, "a-file", "out"), roots, "spec.out", { mustExist: false }), status.INVALID_ARGUMENT, /^spec\.out: .*a-file is not a directory/);
  });

  test("a missing model inside the root is NOT_FOUND naming the field and path", () => {
    const missing = join(root, "models", "nope.onnx");
    rejects(() => resolveAllowedPath(missing, roots, "spec.model", { mustExist: true }), status.NOT_FOUND, new RegExp(`^spec\\.model: .*nope\\.onnx does not exist`));
  });

  test("a missing path outside the roots is PERMISSION_DENIED, not NOT_FOUND (no probing outside)", () => {
    rejects(() => resolveAllowedPath(join(outside, "nope.onnx"), roots, "spec.model", { mustExist: true }), status.PERMISSION_DENIED, /outside the allowed roots/);
  });

  test("no roots configured is FAILED_PRECONDITION; an empty path is INVALID_ARGUMENT", () => {
    rejects(() => resolveAllowedPath(join(root, "models", "model.onnx"), [], "spec.model", { mustExist: true }), status.FAILED_PRECONDITION, /^no allowed roots configured$/);
    rejects(() => resolveAllowedPath("", roots, "spec.model", { mustExist: true }), status.INVALID_ARGUMENT, /^spec\.model: is required/);
  });

  test("roots are compared by their real paths (a root given through a symlink still works)", () => {
    const rootLink = join(base, "root-link");
    symlinkSync(root, rootLink);
    assert.equal(resolveAllowedPath(join(root, "models", "model.onnx"), [rootLink], "spec.model", { mustExist: true }), join(root, "models", "model.onnx"));
    assert.equal(resolveAllowedPath(join(rootLink, "models", "model.onnx"), [root], "spec.model", { mustExist: true }), join(root, "models", "model.onnx"));
  });

  test("any of several roots will do; a root that does not exist is FAILED_PRECONDITION naming it", () => {
    assert.equal(resolveAllowedPath(join(outside, "secret.onnx"), [root, outside], "spec.model", { mustExist: true }), join(outside, "secret.onnx"));
    rejects(() => resolveAllowedPath(join(root, "models", "model.onnx"), [join(base, "no-such-root")], "spec.model", { mustExist: true }), status.FAILED_PRECONDITION, /no-such-root/);
  });

  test("resolveJobPaths checks model, calib and out with their field names", () => {
    const spec = { model: join(root, "models", "model.onnx"), calib: join(root, "link-to-secret.onnx"), out: join(root, "o") };
    rejects(() => resolveJobPaths(spec, roots), status.PERMISSION_DENIED, /^spec\.calib: /);
    const ok = resolveJobPaths({ ...spec, calib: undefined }, roots);
    assert.deepEqual(ok, { model: join(root, "models", "model.onnx"), calib: undefined, out: join(root, "o") });
  });
});

type SpecInit = Partial<Omit<JobSpec, "$typeName" | "$unknown">>;
const good: SpecInit = { model: "m.onnx", calib: "c.jsonl", out: "o", method: "atv", sparsity: 0.5 };
const spec = (over: Partial<SpecInit>) => create(JobSpecSchema, { ...good, ...over });

describe("validateJobSpec", () => {
  test("a complete spec passes; proto3 defaults (empty pattern, propagation, scope) mean the engine defaults", () => {
    validateJobSpec(spec({}));
    validateJobSpec(spec({ method: "magnitude", calib: "" }));
    validateJobSpec(spec({ pattern: "2:4", sparsity: undefined }));
    // The default lives in the engine, so a gRPC client that omits sparsity gets it too.
    validateJobSpec(spec({ sparsity: undefined }));
    assert.equal(resolveSpec(toPruneSpec(spec({ sparsity: undefined })), 1).sparsity, DEFAULT_SPARSITY);
    validateJobSpec(spec({ method: "wanda", pattern: "4:8", propagation: "dense", nsamples: 8, seed: 7n, alpha: 0.5, magnitudeScope: "column", include: ["q_proj"], exclude: ["lm_head"] }));
  });

  const cases: [string, Partial<SpecInit>, RegExp][] = [
    ["method", { method: "sparsegtp" }, /^spec\.method: must be atv, wanda, magnitude, sparsegpt, atv-sparsegpt or tamp/],
    ["tamp_max_sparsity below the sparsity", { method: "tamp", tampMaxSparsity: 0.4 }, /^spec\.tamp_max_sparsity: must be in \[sparsity, 1\]/],
    ["tamp_max_sparsity without tamp", { method: "wanda", tampMaxSparsity: 0.6 }, /^spec\.tamp_max_sparsity: is TAMP's option/],
    ["owl_lambda", { sparsityProfile: "owl", owlLambda: -1 }, /^spec\.owl_lambda: must be a finite number >= 0/],
    ["owl_m", { sparsityProfile: "owl", owlM: 0 }, /^spec\.owl_m: must be a finite number > 0/],
    ["owl with N:M", { sparsityProfile: "owl", pattern: "2:4", sparsity: undefined }, /^spec\.sparsity_profile: owl is for unstructured pruning/],
    ["method (unset)", { method: "" }, /^spec\.method: /],
    ["sparsity above range", { sparsity: 1 }, /^spec\.sparsity: must be in \[0, 1\), got 1/],
    ["sparsity below range", { sparsity: -0.1 }, /^spec\.sparsity: /],
    ["sparsity NaN", { sparsity: Number.NaN }, /^spec\.sparsity: /],
    ["sparsity against the pattern", { pattern: "2:4", sparsity: 0.3 }, /^spec\.sparsity: pattern 2:4 prunes 0\.5/],
    ["pattern", { pattern: "3:2" }, /^spec\.pattern: /],
    ["pattern text", { pattern: "blocky" }, /^spec\.pattern: /],
    ["alpha", { alpha: -1 }, /^spec\.alpha: must be a finite number >= 0/],
    ["alpha infinite", { alpha: Number.POSITIVE_INFINITY }, /^spec\.alpha: /],
    ["propagation", { propagation: "sideways" }, /^spec\.propagation: must be sequential or dense/],
    ["nsamples", { nsamples: 0 }, /^spec\.nsamples: must be a positive integer/],
    ["sparsity_profile", { sparsityProfile: "flat" }, /^spec\.sparsity_profile: must be one of uniform/],
    ["magnitude_scope", { magnitudeScope: "row" }, /^spec\.magnitude_scope: must be matrix or column/],
    ["mask_threads", { maskThreads: 0 }, /^spec\.mask_threads: must be a positive integer/],
    ["stats", { stats: "gpu" }, /^spec\.stats: must be host or graph/],
    ["stats graph with sparsegpt", { method: "sparsegpt", stats: "graph" }, /^spec\.stats: graph is not supported yet for method sparsegpt/],
    ["magnitude matrix with N:M", { method: "magnitude", calib: "", pattern: "2:4", sparsity: undefined }, /^spec\.pattern: /],
    ["model", { model: "" }, /^spec\.model: is required/],
    ["out", { out: "" }, /^spec\.out: is required/],
    ["calib", { calib: "" }, /^spec\.calib: is required by method atv/],
    ["include", { include: ["(unclosed"] }, /^spec\.include: bad regular expression/],
    ["exclude", { exclude: ["[z-a]"] }, /^spec\.exclude: bad regular expression/],
    ["seed", { seed: 2n ** 60n }, /^spec\.seed: /],
  ];
  for (const [name, over, pattern] of cases) {
    test(`bad ${name} → INVALID_ARGUMENT naming it`, () => {
      rejects(() => validateJobSpec(spec(over)), status.INVALID_ARGUMENT, pattern);
    });
  }

  test("no spec at all → INVALID_ARGUMENT naming spec", () => {
    rejects(() => validateJobSpec(undefined), status.INVALID_ARGUMENT, /^spec: is required/);
  });
});

describe("toPruneSpec", () => {
  test("unset proto3 optional fields and empty strings become undefined; int64 seed becomes a number", () => {
    const p = toPruneSpec(create(JobSpecSchema, { model: "m", out: "o", method: "magnitude", include: ["a"], force: true }));
    assert.deepEqual(p, {
      model: "m", calib: undefined, out: "o", method: "magnitude", sparsity: undefined, pattern: undefined, alpha: undefined,
      propagation: undefined, nsamples: undefined, seed: undefined, include: ["a"], exclude: [], magnitudeScope: undefined, sparsityProfile: undefined, owlLambda: undefined, owlM: undefined, force: true,
    });
    const q = toPruneSpec(spec({ sparsity: 0, alpha: 0, nsamples: 3, seed: -5n, pattern: "2:4", propagation: "dense", magnitudeScope: "column" }));
    assert.equal(q.sparsity, 0, "an explicit 0 stays 0");
    assert.equal(q.alpha, 0);
    assert.equal(q.nsamples, 3);
    assert.equal(q.seed, -5);
    assert.equal(q.pattern, "2:4");
    assert.equal(q.propagation, "dense");
    assert.equal(q.magnitudeScope, "column");
    assert.equal(q.calib, "c.jsonl");
  });
});

describe("checkJobFiles: every file of a job, by realpath (issue 7)", () => {
  let gen: { modelPath: string; calibPath: string; dir: string; npys: string[] };
  before(async () => {
    const dir = join(root, "gen");
    const g = await generateModel({ outDir: dir, layers: 1, hidden: 32, samples: 2, seqLen: 8, imageTokens: 2, seed: 1 });
    gen = { modelPath: g.modelPath, calibPath: g.calibPath, dir, npys: g.samples.map((s) => join(dir, s.file)) };
  });

  test("a model, its external data, calibration set and .npy files inside the root: all listed as inputs, real paths", () => {
    const files = checkJobFiles({ model: gen.modelPath, calib: gen.calibPath, out: join(root, "gen-out"), method: "atv" }, roots);
    assert.deepEqual(files.inputs.sort(), [gen.modelPath, join(gen.dir, "model.onnx.data"), gen.calibPath, ...gen.npys].sort());
    assert.equal(files.out, join(root, "gen-out"));
  });

  test("an external-data file that is a symlink out of the root → PERMISSION_DENIED naming it (its bytes would be copied into the output)", () => {
    const evil = join(root, "evil-model");
    mkdirSync(evil, { recursive: true });
    copyFileSync(gen.modelPath, join(evil, "model.onnx"));
    copyFileSync(join(gen.dir, "model.onnx.data"), join(outside, "model.onnx.data"));
    symlinkSync(join(outside, "model.onnx.data"), join(evil, "model.onnx.data"));
    rejects(() => checkJobFiles({ model: join(evil, "model.onnx"), out: join(root, "evil-out"), method: "magnitude" }, roots), status.PERMISSION_DENIED,
      /^spec\.model \(external data model\.onnx\.data\): .*evil-model\/model\.onnx\.data is outside the allowed roots/);
    rejects(() => checkExternalDataPaths(join(evil, "model.onnx"), roots), status.PERMISSION_DENIED, /external data model\.onnx\.data/);
  });

  test("a .npy that is a symlink out of the root → PERMISSION_DENIED naming the JSONL line", () => {
    const d = join(root, "npy-link");
    mkdirSync(d, { recursive: true });
    copyFileSync(gen.npys[0]!, join(outside, "s.npy"));
    symlinkSync(join(outside, "s.npy"), join(d, "s.npy"));
    writeFileSync(join(d, "calib.jsonl"), JSON.stringify({ inputs_embeds: "s.npy" }) + "\n");
    rejects(() => checkJobFiles({ model: gen.modelPath, calib: join(d, "calib.jsonl"), out: join(root, "npy-out"), method: "atv" }, roots), status.PERMISSION_DENIED,
      /^spec\.calib \(.*calib\.jsonl:1 inputs_embeds\): .* is outside the allowed roots/);
  });

  test("a misspelled calibration key → INVALID_ARGUMENT at submit naming the line and the closest key", () => {
    const d = join(root, "typo");
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "calib.jsonl"), JSON.stringify({ input_ids: [1, 2] }) + "\n" + JSON.stringify({ input_ids: [1, 2], imagemask: [0, 1] }) + "\n");
    rejects(() => checkJobFiles({ model: gen.modelPath, calib: join(d, "calib.jsonl"), out: join(root, "typo-out"), method: "wanda" }, roots), status.INVALID_ARGUMENT,
      /^spec\.calib: .*calib\.jsonl:2: unknown key "imagemask" \(did you mean "image_mask"\?\)/);
  });

  test("an output folder that holds an input (the model's own folder) → FAILED_PRECONDITION on spec.out, whatever --force says", () => {
    rejects(() => checkJobFiles({ model: gen.modelPath, calib: gen.calibPath, out: gen.dir, method: "atv" }, roots), status.FAILED_PRECONDITION,
      /^spec\.out: .*holds an input of the job \(.*model\.onnx/);
    // Through a link to the folder: still the same folder.
    symlinkSync(gen.dir, join(root, "gen-link"));
    rejects(() => checkJobFiles({ model: gen.modelPath, out: join(root, "gen-link"), method: "magnitude" }, roots), status.FAILED_PRECONDITION, /^spec\.out: /);
  });

  test("work folders: inside the roots (need not exist yet), a link out refused", () => {
    assert.equal(resolveWorkDir(join(root, "work", "job-1"), roots), join(root, "work", "job-1"));
    rejects(() => resolveWorkDir(join(root, "link-to-outside", "job-1"), roots), status.PERMISSION_DENIED, /^workDir: /);
  });
});
