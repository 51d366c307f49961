// The real `atvp` command line, spawned as a child process: gen-model, inspect, prune (JSON-line
// progress when stdout is not a terminal, report.json), and what it says about bad flags and
// commands that are not built yet.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLI, FIXTURE_DIR, REPO, tempDir } from "../support/fixtures.js";

const tmp = tempDir("cli");
after(() => tmp.cleanup());

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node dist/.../main.js ...args` with pipes (so neither stdout nor stderr is a TTY). */
function atvp(...args: string[]): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: REPO, encoding: "utf8", timeout: 20_000, stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) throw r.error;
  assert.notEqual(r.signal, "SIGTERM", `atvp ${args.join(" ")} timed out`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: Run, what: string): void {
  assert.equal(r.status, 0, `${what} exited ${r.status}; stderr:\n${r.stderr}`);
}

const modelDir = join(tmp.path, "m");
const model = join(modelDir, "model.onnx");
const calib = join(modelDir, "calib.jsonl");

before(() => {
  const r = atvp("gen-model", "--layers", "2", "--hidden", "64", "--samples", "3", "--seq-len", "24", "--image-tokens", "10", "--out", modelDir);
  ok(r, "gen-model");
  const result = JSON.parse(r.stdout) as { modelPath: string; calibPath: string; numLinears: number };
  assert.equal(result.modelPath, model);
  assert.equal(result.calibPath, calib);
  assert.equal(result.numLinears, 15);
});

describe("gen-model", () => {
  test("writes model.onnx, model.onnx.data and calib.jsonl with its .npy samples", () => {
    for (const f of ["model.onnx", "model.onnx.data", "calib.jsonl"]) assert.ok(existsSync(join(modelDir, f)), f);
    const lines = readFileSync(calib, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { inputs_embeds: string; image_mask: number[] });
    assert.equal(lines.length, 3);
    for (const l of lines) {
      assert.ok(existsSync(join(modelDir, l.inputs_embeds)), l.inputs_embeds);
      assert.equal(l.image_mask.length, 24);
    }
  });

  test("refuses a non-empty output folder, naming it", () => {
    const r = atvp("gen-model", "--out", modelDir);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^atvp: error \[OUTPUT_EXISTS\] /);
    assert.ok(r.stderr.includes(modelDir), r.stderr);
  });
});

describe("inspect", () => {
  test("prints the blocks and their linears", () => {
    const r = atvp("inspect", model);
    ok(r, "inspect");
    assert.ok(r.stdout.includes(model));
    assert.match(r.stdout, /block 0 \(layers\.0\): 7 linears, 50,176 params/);
    assert.match(r.stdout, /block 1 \(layers\.1\): 7 linears, 50,176 params/);
    for (const proj of ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) {
      assert.match(r.stdout, new RegExp(`\\[\\d+, \\d+\\] FLOAT /model/layers\\.1/\\w+/${proj}/MatMul`), proj);
    }
    assert.match(r.stdout, /\[176, 64\] FLOAT \/model\/layers\.0\/mlp\/down_proj/);
    assert.match(r.stdout, /excluded \(outside blocks\): \S+ \[64, 256\] FLOAT/);
    assert.match(r.stdout, /prunable parameters: 100,352/);
  });

  test("--json parses, with blocks, linears, shapes, params and data types", () => {
    const r = atvp("inspect", model, "--json");
    ok(r, "inspect --json");
    const info = JSON.parse(r.stdout) as {
      mainInput: string;
      blocks: { index: number; label: string; params: number; linears: { weight: string; node: string; shape: [number, number]; params: number; dataType: string }[] }[];
      excluded: { shape: [number, number] }[];
      prunableParams: number;
    };
    assert.equal(info.mainInput, "inputs_embeds");
    assert.deepEqual(info.blocks.map((b) => [b.index, b.label]), [[0, "layers.0"], [1, "layers.1"]]);
    for (const b of info.blocks) {
      assert.equal(b.linears.length, 7);
      for (const l of b.linears) {
        assert.equal(typeof l.weight, "string");
        assert.match(l.node, new RegExp(`/layers\\.${b.index}/`));
        assert.equal(l.params, l.shape[0] * l.shape[1]);
        assert.equal(l.dataType, "FLOAT");
      }
      assert.deepEqual(b.linears.map((l) => l.shape), [[64, 64], [64, 64], [64, 64], [64, 64], [64, 176], [64, 176], [176, 64]]);
      assert.equal(b.params, b.linears.reduce((a, l) => a + l.params, 0));
    }
    assert.deepEqual(info.excluded.map((l) => l.shape), [[64, 256]]);
    assert.equal(info.prunableParams, 100_352);
  });

  test("a model folder (the shared genai fixture, as it is): its decoder, found from genai_config.json", () => {
    const r = atvp("inspect", FIXTURE_DIR, "--json");
    ok(r, "inspect DIR --json");
    const info = JSON.parse(r.stdout) as { model: string; blocks: { linears: { shape: [number, number]; dataType: string }[] }[] };
    assert.equal(info.model, join(FIXTURE_DIR, "model.onnx"));
    assert.equal(info.blocks.length, 2);
    assert.ok(info.blocks.every((b) => b.linears.length === 7 && b.linears.every((l) => l.dataType === "FLOAT16")));
    // The same as the decoder's own path gives.
    assert.equal(atvp("inspect", join(FIXTURE_DIR, "model.onnx"), "--json").stdout, r.stdout);
    const unknown = join(tmp.path, "not-a-model-folder");
    mkdirSync(unknown, { recursive: true });
    const bad = atvp("inspect", unknown);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /unknown model folder layout/);
  });

  test("a file that is not ONNX → exit 1 and an error naming the file", () => {
    const bad = join(tmp.path, "bad.onnx");
    writeFileSync(bad, "{\"not\": \"onnx\"}\n");
    const r = atvp("inspect", bad);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^atvp: error \[ONNX_FORMAT\] /);
    assert.ok(r.stderr.includes(bad), r.stderr);
  });

  test("without a model path → non-zero with usage", () => {
    const r = atvp("inspect");
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /atvp inspect MODEL/);
  });
});

interface Event { type: string; block?: number; blocks?: number; samples?: number; method?: string }

describe("prune", () => {
  test("prints JSON lines when stdout is not a TTY, exits 0 and writes report.json", () => {
    const out = join(tmp.path, "pruned");
    const r = atvp("prune", "--model", model, "--calib", calib, "--method", "atv", "--sparsity", "0.5", "--threads", "2", "--out", out);
    ok(r, "prune");
    const lines = r.stdout.split("\n").filter((l) => l.length > 0);
    const events = lines.map((l, i) => {
      try {
        return JSON.parse(l) as Event;
      } catch {
        assert.fail(`stdout line ${i + 1} is not JSON: ${l}`);
      }
    });
    assert.deepEqual(events.map((e) => (e.block === undefined ? e.type : `${e.type}:${e.block}`)), [
      "job_started", "block_started:0", "block_finished:0", "block_started:1", "block_finished:1", "job_finished",
    ]);
    assert.equal(events[0]!.blocks, 2);
    assert.equal(events[0]!.samples, 3);
    assert.equal(events[0]!.method, "atv");
    assert.match(r.stderr, /pruned .*method atv/, "the human summary goes to stderr");

    assert.deepEqual(readdirSync(out).sort(), ["model.onnx", "model.onnx.data", "report.json"]);
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as Record<string, unknown> & {
      layers: Record<string, unknown>[];
      blocks: Record<string, unknown>[];
      totals: Record<string, unknown>;
    };
    assert.equal(report.method, "atv");
    assert.equal(report.sparsity, 0.5);
    assert.equal(report.pattern, "unstructured");
    assert.equal(report.alpha, 1);
    assert.equal(report.layers.length, 14);
    for (const l of report.layers) {
      assert.equal(typeof l.weight, "string");
      assert.match(l.node as string, /\/layers\.[01]\//);
      assert.ok(l.block === 0 || l.block === 1);
      assert.ok(Array.isArray(l.shape) && l.shape.length === 2);
      assert.equal(l.sparsity, 0.5);
    }
    assert.deepEqual(report.blocks.map((b) => b.index), [0, 1]);
    for (const b of report.blocks) {
      assert.equal(typeof b.cosDistAvg, "number");
      assert.ok(Number.isFinite(b.cosDistAvg) && (b.cosDistAvg as number) >= 0);
      for (const key of ["k", "nText", "nVisual"]) {
        const v = b[key] as number[];
        assert.ok(Array.isArray(v) && v.length === 3 && v.every((x) => Number.isInteger(x) && x >= 0), `${key}: ${JSON.stringify(v)}`);
      }
      assert.deepEqual(b.nVisual, [10, 10, 10]);
      assert.ok((b.k as number[]).every((k, j) => k <= (b.nVisual as number[])[j]!));
      assert.ok(typeof b.seconds === "number" && b.seconds >= 0);
    }
    assert.equal(report.totals.params, 100_352);
    assert.equal(report.totals.pruned, 50_176);
    assert.equal(report.totals.sparsity, 0.5);
    assert.equal(report.totals.blocks, 2);
    assert.equal(report.totals.samples, 3);
  });

  test("a bad flag value (--sparsity abc) → non-zero and stderr names --sparsity", () => {
    const out = join(tmp.path, "never");
    const r = atvp("prune", "--model", model, "--calib", calib, "--sparsity", "abc", "--out", out);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^atvp: error \[INVALID_ARGUMENT\] --sparsity: /);
    assert.ok(r.stderr.includes("abc"));
    assert.ok(!existsSync(out));
  });

  test("an unknown flag → non-zero and stderr names it", () => {
    const r = atvp("prune", "--model", model, "--bogus", "1");
    assert.notEqual(r.status, 0);
    assert.ok(r.stderr.includes("--bogus"), r.stderr);
  });

  test("a sparsity outside [0, 1) → exit 1 naming sparsity, no stack trace", () => {
    const r = atvp("prune", "--model", model, "--calib", calib, "--sparsity", "1.5", "--out", join(tmp.path, "never2"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^atvp: error \[INVALID_ARGUMENT\] sparsity: must be in \[0, 1\)/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });

  test("a negative number (--sparsity -0.1) → out of range, not \"ambiguous\"", () => {
    const r = atvp("prune", "--model", model, "--calib", calib, "--sparsity", "-0.1", "--out", join(tmp.path, "never3"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^atvp: error \[INVALID_ARGUMENT\] sparsity: must be in \[0, 1\), got -0\.1 \(out of range\)/);
    assert.doesNotMatch(r.stderr, /ambiguous/);
    const threads = atvp("prune", "--model", model, "--method", "magnitude", "--threads", "-2", "--out", join(tmp.path, "never3"));
    assert.match(threads.stderr, /\[INVALID_ARGUMENT\] threads: must be a positive integer, got -2 \(out of range\)/);
    assert.ok(!existsSync(join(tmp.path, "never3")));
  });

  test("--out /proc/x and --out below a file fail at once with OUTPUT_PATH, no stack trace; --threads 100000 is clamped", () => {
    const proc = atvp("prune", "--model", model, "--method", "magnitude", "--out", "/proc/atvp-x");
    assert.equal(proc.status, 1);
    assert.match(proc.stderr, /^atvp: error \[OUTPUT_PATH\] \/proc\/atvp-x: is on the special file system/);
    const file = join(tmp.path, "a-file");
    writeFileSync(file, "x");
    const notdir = atvp("prune", "--model", model, "--method", "magnitude", "--out", join(file, "out"));
    assert.equal(notdir.status, 1);
    assert.match(notdir.stderr, /^atvp: error \[OUTPUT_PATH\] .*a-file is a file, not a folder.*ENOTDIR/);
    for (const r of [proc, notdir]) assert.doesNotMatch(r.stderr, /\n\s+at /);
    const out = join(tmp.path, "many-threads");
    const clamped = atvp("prune", "--model", model, "--method", "magnitude", "--threads", "100000", "--out", out);
    ok(clamped, "prune --threads 100000");
    assert.match(clamped.stderr, /warning: --threads 100000 is more than this machine's \d+ cores; using \d+/);
    assert.deepEqual(readdirSync(out).sort(), ["model.onnx", "model.onnx.data", "report.json"]);
  });

  test("a non-empty output folder → exit 1 OUTPUT_EXISTS; --force overwrites", () => {
    const out = join(tmp.path, "busy");
    mkdirSync(out);
    writeFileSync(join(out, "keep.txt"), "x");
    const refused = atvp("prune", "--model", model, "--method", "magnitude", "--sparsity", "0.5", "--out", out);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /^atvp: error \[OUTPUT_EXISTS\] /);
    assert.ok(refused.stderr.includes(out));
    const forced = atvp("prune", "--model", model, "--method", "magnitude", "--sparsity", "0.5", "--out", out, "--force");
    ok(forced, "prune --force");
    assert.deepEqual(readdirSync(out).sort(), ["keep.txt", "model.onnx", "model.onnx.data", "report.json"]);
  });
});

describe("commands", () => {
  test("atvp eval without its flags → non-zero, naming the missing flag", () => {
    const r = atvp("eval", "--dense", model);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--pruned: is required/);
  });

  test("atvp with no command → usage and a non-zero exit", () => {
    const r = atvp();
    assert.notEqual(r.status, 0);
    assert.match(r.stdout + r.stderr, /usage: atvp <command>/);
    for (const c of ["prune", "inspect", "gen-model"]) assert.ok((r.stdout + r.stderr).includes(c));
  });

  test("atvp COMMAND --help prints that command's usage and exits 0, for every command", () => {
    const commands: [string[], RegExp][] = [
      [["prune"], /^usage: atvp prune +--model M/],
      [["inspect"], /^usage: atvp inspect +MODEL/],
      [["gen-model"], /^usage: atvp gen-model +--layers L/],
      [["cluster", "up"], /^usage: atvp cluster up +\[--workers N/],
      [["cluster", "down"], /^usage: atvp cluster down +\[--dir D\]/],
      [["submit"], /^usage: atvp submit +prune's job flags[\s\S]*CONNECTION: --coordinator/],
      [["status"], /^usage: atvp status +JOB/],
      [["watch"], /^usage: atvp watch +JOB/],
      [["cancel"], /^usage: atvp cancel +JOB/],
    ];
    for (const [command, usage] of commands) {
      for (const flag of ["--help", "-h"]) {
        const r = atvp(...command, flag);
        ok(r, `atvp ${command.join(" ")} ${flag}`);
        assert.match(r.stdout, usage);
        assert.equal(r.stderr, "");
      }
    }
    // Help wins over other flags, even invalid ones; the whole cluster group has one help.
    ok(atvp("prune", "--sparsity", "nope", "--help"), "prune --sparsity nope --help");
    const cluster = atvp("cluster", "--help");
    ok(cluster, "cluster --help");
    assert.match(cluster.stdout, /atvp cluster up[\s\S]*atvp cluster down/);
  });

  test("an unknown command → exit 2 with usage", () => {
    const r = atvp("frobnicate");
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command "frobnicate"/);
    assert.match(r.stderr, /usage: atvp <command>/);
  });
});

describe("prune --method tamp", () => {
  test("runs in one process with --tamp-max-sparsity; report.json names the DAS profile and per-linear targets", () => {
    const out = join(tmp.path, "pruned-tamp");
    const r = atvp("prune", "--model", model, "--calib", calib, "--method", "tamp", "--sparsity", "0.5", "--tamp-max-sparsity", "0.58", "--threads", "1", "--out", out);
    ok(r, "prune tamp");
    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { sparsityProfile: object; layers: { targetSparsity: number; pruned: number; shape: number[] }[] };
    assert.deepEqual(report.sparsityProfile, { name: "das", tampMaxSparsity: 0.58 });
    for (const l of report.layers) {
      assert.ok(l.targetSparsity <= 0.58 + 1e-6);
      assert.equal(l.pruned, Math.floor(l.shape[0]! * l.targetSparsity) * l.shape[1]!);
    }
  });
});
