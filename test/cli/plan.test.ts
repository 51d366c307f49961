// `atvp plan`: the stage grid the coordinator's shard planner would cut, memory per worker,
// bytes per link and the predicted wall time, from a Hugging Face config.json (no weights) or an
// ONNX model; `--calibrate` measures the cost table through the real engine.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLI, FIXTURE_DIR, REPO, tempDir } from "../support/fixtures.js";

const tmp = tempDir("plan");
after(() => tmp.cleanup());

function atvp(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: REPO, encoding: "utf8", timeout: 120_000, stdio: ["ignore", "pipe", "pipe"] });
  if (r.error) throw r.error;
  assert.notEqual(r.signal, "SIGTERM", `atvp ${args.join(" ")} timed out`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function writeJson(name: string, value: unknown): string {
  const path = join(tmp.path, name);
  writeFileSync(path, JSON.stringify(value));
  return path;
}

interface Plan {
  source: string;
  blocks: number;
  stages: Array<{ index: number; worker: string; workers: string[]; firstBlock: number; endBlock: number; replicas: number; params: number; weightBytes: number; peakBytes: number; seconds: number }>;
  replicas: number;
  exchange: { bytesPerReplicaPerBlock: number; seconds: number };
  links: Array<{ from: number; to: number; bytes: number; seconds: number }>;
  boundaryBytesPerSample: number;
  predicted: { computeSeconds: number; transferSeconds: number; wallSeconds: number; computeByTerm: { tokenParams: number; samples: number; compressUnits: number } };
}

function close(actual: number, expected: number): void {
  assert.ok(Math.abs(actual - expected) <= 1e-9 * Math.abs(expected), `${actual} is not ${expected}`);
}

function plan(...args: string[]): Plan {
  const r = atvp("plan", ...args, "--json");
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Plan;
}

const cost = writeJson("cost.json", {
  machine: { cpu: "test", cores: 1, platform: "test", node: "test", device: "cpu", threads: 1 },
  measuredAt: "2026-11-30T00:00:00Z",
  methods: { atv: { secondsPerTokenParam: 1e-9, blocks: 1, tokens: 1, paramsPerBlock: 1 } },
});
// hidden 64, 4 heads (head_dim 16), 2 kv heads: q, o 64x64; k, v 64x32; gate, up 64x128; down 128x64
const small = writeJson("small.json", {
  hidden_size: 64, intermediate_size: 128, num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 2, torch_dtype: "float32",
});
const SMALL = ["--config", small, "--workers", "2", "--worker-memory", "1MiB", "--network-gbps", "1", "--nsamples", "10", "--tokens-per-sample", "100", "--cost", cost, "--replicas", "1"];

describe("atvp plan --config (hand-checked)", () => {
  test("4 blocks on 2 workers, sequential: two stages of two blocks, one link, chained time", () => {
    const p = plan(...SMALL);
    const params = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128; // 36,864
    assert.equal(p.blocks, 4);
    assert.deepEqual(p.stages.map((s) => [s.firstBlock, s.endBlock, s.replicas]), [[0, 2, 1], [2, 4, 1]]);
    for (const s of p.stages) {
      assert.equal(s.params, 2 * params);
      assert.equal(s.weightBytes, 2 * params * 4);
      assert.equal(s.peakBytes, 2 * params * 4); // one block's weights x2 (the planner's need), ATV holds nothing more
      assert.ok(Math.abs(s.seconds - 2 * 1e-9 * 1000 * params) < 1e-12);
    }
    assert.equal(p.boundaryBytesPerSample, 64 * 100 * 4);
    assert.deepEqual(p.links.map((l) => [l.from, l.to, l.bytes]), [[0, 1, 64 * 100 * 4 * 10]]);
    assert.ok(Math.abs(p.links[0]!.seconds - 256_000 / 125e6) < 1e-12);
    assert.ok(Math.abs(p.predicted.wallSeconds - (4 * 1e-9 * 1000 * params + 256_000 / 125e6)) < 1e-12);
  });

  test("2 replicas on 2 workers: one stage, half the compute, plus the exchanged records", () => {
    const p = plan(...SMALL.slice(0, -2), "--replicas", "2");
    const params = 36_864;
    assert.deepEqual([p.stages.length, p.replicas, p.links.length], [1, 2, 0]);
    assert.ok(Math.abs(p.stages[0]!.seconds - (4 * 1e-9 * 1000 * params) / 2) < 1e-12);
    // Per block a replica pulls the other's 5 samples: 100 distances + sums over the inputs of
    // q/k/v (64), o (64), gate/up (64) and down (128), as float64; and the masks of the linears
    // the other replica selects, about half of the block's 36,864 entries at one bit each.
    assert.equal(p.exchange.bytesPerReplicaPerBlock, 5 * 8 * (100 + 64 + 64 + 64 + 128) + 36_864 / 8 / 2);
    const exchange = (4 * (5 * 8 * 420 + 2_304)) / 125e6;
    assert.ok(Math.abs(p.predicted.wallSeconds - ((4 * 1e-9 * 1000 * params) / 2 + exchange)) < 1e-12);
  });

  test("a table with every term: tokens x params, samples and compress units, per block (worked by hand)", () => {
    const full = writeJson("cost-full.json", {
      machine: { cpu: "test", cores: 1, platform: "test", node: "test", device: "cpu", threads: 1 },
      measuredAt: "2026-12-03T00:00:00Z",
      methods: { atv: { secondsPerTokenParam: 1e-9, secondsPerSample: 1e-3, secondsPerCompressUnit: 1e-7, blocks: 1, tokens: 1, paramsPerBlock: 1 } },
    });
    const args = ["--config", small, "--workers", "2", "--worker-memory", "1MiB", "--network-gbps", "1", "--nsamples", "10", "--tokens-per-sample", "100", "--cost", full];
    // Per block, 1,000 tokens of 10 samples: 36,864 params; ATV's compress units its entries (36,864).
    const block = 1e-9 * 1000 * 36_864 + 1e-3 * 10 + 1e-7 * 36_864;
    const chained = plan(...args, "--replicas", "1");
    for (const s of chained.stages) close(s.seconds, 2 * block);
    close(chained.predicted.wallSeconds, 4 * block + 256_000 / 125e6);
    // Two replicas: half of the token and sample terms; the masks shared out longest first
    // (gate, up, down 8,192 entries; q, o 4,096; k, v 2,048): 8,192 + 8,192 + 2,048 on one
    // replica, 8,192 + 4,096 + 4,096 + 2,048 on the other, 18,432 each.
    const replicated = plan(...args, "--replicas", "2");
    const half = (1e-9 * 1000 * 36_864 + 1e-3 * 10) / 2 + 1e-7 * 18_432;
    close(replicated.stages[0]!.seconds, 4 * half);
    close(replicated.predicted.computeSeconds, 4 * half);
    // The same by term, over the 4 blocks.
    const terms = replicated.predicted.computeByTerm;
    close(terms.tokenParams, (4 * 1e-9 * 1000 * 36_864) / 2);
    close(terms.samples, (4 * 1e-3 * 10) / 2);
    close(terms.compressUnits, 4 * 1e-7 * 18_432);
    const text = atvp("plan", ...args, "--replicas", "2");
    assert.match(text.stdout, /compute: forwards \(tokens x params\) 0\.1 s, per-sample 0\.0 s, compress step 0\.0 s/);
  });

  test("sparsegpt: a replica also holds every sample's per-sample Hessians, so only roomy workers get replicas", () => {
    const sgCost = writeJson("cost-sparsegpt.json", {
      machine: { cpu: "test", cores: 1, platform: "test", node: "test", device: "cpu", threads: 1 },
      measuredAt: "2026-11-30T00:00:00Z",
      methods: { sparsegpt: { secondsPerTokenParam: 1e-9, blocks: 1, tokens: 1, paramsPerBlock: 1 } },
    });
    const args = ["--config", small, "--workers", "2", "--network-gbps", "1", "--nsamples", "10", "--tokens-per-sample", "100", "--cost", sgCost, "--method", "sparsegpt"];
    const p = plan(...args, "--worker-memory", "4MiB", "--replicas", "2");
    assert.deepEqual([p.stages.length, p.replicas], [1, 2]);
    // The Hessians go down the replicas in a chain: per block a replica fetches one sum (the
    // first replica's, or the total): the upper triangles of AᵀA for the inputs of q/k/v, o,
    // gate/up (64) and down (128), 3 x 2,080 + 8,256 = 14,496 float64. Then the new float32
    // weights of the linears the other replica solves, about half of the block's 36,864.
    assert.equal(p.exchange.bytesPerReplicaPerBlock, 8 * 14_496 + (36_864 * 4) / 2);
    // A block's need: weights x2 (294,912) + SparseGPT's working bytes (three 64-wide inputs'
    // Hessian, sample matrix, row and factor: 3 x 98,880; the 128-wide one's: 394,368; the
    // block's new weights 147,456; down's Cholesky work and copies 524,288; the Gram memory the
    // thread keeps, gate/up's and down's: (128 + 32) rows x 72 and (64 + 32) x 136 padded
    // channels x 8 bytes, two 64 KiB pages each, 131,072) = 1,788,736; then the records of its
    // own 5 samples, five sums of the chain, and a sample's whole matrix where it keeps records
    // (about two sums): 12 x 115,968.
    assert.equal(p.stages[0]!.peakBytes, 1_788_736 + 12 * 8 * 14_496);
    const tight = atvp("plan", ...args, "--worker-memory", "3MiB", "--replicas", "2");
    assert.equal(tight.status, 1);
    assert.match(tight.stderr, /replicas: a replica of sparsegpt \(one of 2\) holds exchanged records beside a block: 3180352 bytes/);
    assert.equal(plan(...args, "--worker-memory", "3MiB").replicas, 1);
    assert.equal(plan(...args, "--worker-memory", "4MiB").replicas, 2);
  });

  test("dense propagation: the slowest stage bounds the job", () => {
    const p = plan(...SMALL, "--propagation", "dense");
    assert.ok(Math.abs(p.predicted.wallSeconds - (p.stages[0]!.seconds + p.links[0]!.seconds)) < 1e-12);
  });

  test("more workers than blocks: one block per stage; text_config and float16 of an LLaVA-style config", () => {
    const llava = writeJson("llava.json", {
      torch_dtype: "float16", vision_config: { hidden_size: 1024 },
      text_config: { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 3, num_attention_heads: 4 },
    });
    const p = plan("--config", llava, "--workers", "8", "--worker-memory", "1GiB", "--cost", cost, "--replicas", "1");
    assert.deepEqual(p.stages.map((s) => [s.firstBlock, s.endBlock]), [[0, 1], [1, 2], [2, 3]]);
    // no num_key_value_heads: k, v as wide as q
    assert.equal(p.stages[0]!.weightBytes, (4 * 64 * 64 + 3 * 64 * 128) * 2);
    assert.equal(p.boundaryBytesPerSample, 64 * 1500 * 2);
  });

  test("the text output names stages, links and the prediction", () => {
    const r = atvp("plan", ...SMALL);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /grid: 2 stages x 1 replica\(s\) on 2 workers/);
    assert.match(r.stdout, /stage 1 on worker-1: blocks 2\.\.3/);
    assert.match(r.stdout, /link 0 -> 1/);
    assert.match(r.stdout, /predicted wall time/);
  });
});

describe("atvp plan: a 72B Qwen2.5-VL-shaped config", () => {
  // The published Qwen2.5-VL-72B-Instruct text sizes (top-level fields, as in its config.json).
  const qwen72b = writeJson("qwen2_5_vl_72b.json", {
    architectures: ["Qwen2_5_VLForConditionalGeneration"], model_type: "qwen2_5_vl",
    hidden_size: 8192, intermediate_size: 29568, num_hidden_layers: 80, num_attention_heads: 64, num_key_value_heads: 8,
    torch_dtype: "bfloat16", vision_config: { hidden_size: 1280, depth: 32, out_hidden_size: 8192 },
  });

  test("4 workers of 80 GiB: four contiguous stages covering 80 blocks, each worker's memory fits", () => {
    const p = plan("--config", qwen72b, "--workers", "4", "--worker-memory", "80GiB", "--replicas", "1");
    assert.equal(p.blocks, 80);
    assert.equal(p.stages.length, 4);
    let next = 0;
    for (const s of p.stages) {
      assert.equal(s.firstBlock, next);
      assert.ok(s.endBlock > s.firstBlock);
      next = s.endBlock;
      assert.ok(s.peakBytes <= 80 * 2 ** 30, `stage ${s.index} needs ${s.peakBytes}`);
    }
    assert.equal(next, 80);
    const blockParams = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 29568;
    assert.equal(p.stages.reduce((a, s) => a + s.params, 0), 80 * blockParams);
    assert.equal(p.links.length, 3);
    assert.ok(p.predicted.wallSeconds > p.predicted.computeSeconds, "transfers add to the chain");
  });

  test("a model too big for the workers is a clear error", () => {
    const r = atvp("plan", "--config", qwen72b, "--workers", "4", "--worker-memory", "2GiB");
    assert.equal(r.status, 1);
    assert.match(r.stderr, /--worker-memory: .*does not fit: one block needs \d+ bytes/);
  });

  test("--replicas 2 on 4 workers: two stages of two replicas; by default (ATV, sequential) one stage of four", () => {
    const p = plan("--config", qwen72b, "--workers", "4", "--worker-memory", "80GiB", "--replicas", "2");
    assert.deepEqual([p.stages.length, p.replicas, p.stages[0]!.replicas], [2, 2, 2]);
    // Each stage names all its replicas' workers: four workers, each in exactly one stage.
    assert.deepEqual(p.stages.map((s) => s.workers), [["worker-0", "worker-1"], ["worker-2", "worker-3"]]);
    assert.deepEqual(p.stages.map((s) => s.worker), ["worker-0", "worker-2"]);
    const auto = plan("--config", qwen72b, "--workers", "4", "--worker-memory", "80GiB");
    assert.deepEqual([auto.stages.length, auto.replicas], [1, 4]);
    assert.deepEqual(auto.stages[0]!.workers, ["worker-0", "worker-1", "worker-2", "worker-3"]);
    const text = atvp("plan", "--config", qwen72b, "--workers", "4", "--worker-memory", "80GiB");
    assert.match(text.stdout, /stage 0 on worker-0\.\.worker-3 \(4 replicas\): blocks 0\.\.79 \(80\)/);
    // A SparseGPT replica holds its own samples' per-sample Hessians (64 of 128 x ~4.3 GB here at
    // 2 replicas, 32 at 4): refused, and by default one replica per stage.
    const sparsegpt = atvp("plan", "--config", qwen72b, "--workers", "4", "--worker-memory", "80GiB", "--replicas", "2", "--method", "sparsegpt");
    assert.equal(sparsegpt.status, 1);
    assert.match(sparsegpt.stderr, /replicas: a replica of sparsegpt \(one of 2\) holds exchanged records beside a block: \d+ bytes, more than any worker has/);
    assert.equal(plan("--config", qwen72b, "--workers", "4", "--worker-memory", "80GiB", "--method", "sparsegpt").replicas, 1);
  });
});

describe("atvp plan: refusals", () => {
  test("neither or both of --model/--config, a bad size, a method missing from the table", () => {
    assert.match(atvp("plan", "--workers", "2", "--worker-memory", "1GiB").stderr, /--model\/--config: give exactly one/);
    assert.match(atvp("plan", ...SMALL.slice(0, 4), "--worker-memory", "80 bananas").stderr, /--worker-memory: expects a size/);
    const r = atvp("plan", ...SMALL, "--method", "wanda");
    assert.equal(r.status, 1);
    assert.match(r.stderr, /has no cost for method wanda .*atvp plan --calibrate --method wanda/);
    // --calibrate checks --device before it generates anything.
    const d = atvp("plan", "--calibrate", "--device", "gpu");
    assert.equal(d.status, 1);
    assert.match(d.stderr, /--device: must be cpu, cuda or auto, got "gpu"/);
    assert.doesNotMatch(d.stderr, /calibrating/);
  });
});

describe("atvp plan on an onnxruntime-genai folder (the fixture, as it is)", () => {
  test("--config genai_config.json points to --model (it has no MLP width); --model plans the folder's decoder, given as the file or the folder", () => {
    const r = atvp("plan", "--config", join(FIXTURE_DIR, "genai_config.json"), "--workers", "2", "--worker-memory", "1GiB");
    assert.equal(r.status, 1);
    assert.match(r.stderr, /genai_config\.json: is an onnxruntime-genai config .*--model model\.onnx beside it/);
    const p = plan("--model", join(FIXTURE_DIR, "model.onnx"), "--workers", "2", "--worker-memory", "1GiB", "--replicas", "1");
    // The fixture's decoder: 2 blocks of hidden 16 (genai_config.json says so too).
    assert.equal(p.blocks, 2);
    assert.deepEqual(p.stages.map((s) => [s.firstBlock, s.endBlock]), [[0, 1], [1, 2]]);
    // The folder itself plans the same decoder (found from genai_config.json, as prune finds it).
    const folder = plan("--model", FIXTURE_DIR, "--workers", "2", "--worker-memory", "1GiB", "--replicas", "1");
    assert.deepEqual({ ...folder, source: "" }, { ...p, source: "" });
    assert.equal(folder.source, join(FIXTURE_DIR, "model.onnx"));
  });
});

describe("atvp plan --model and --calibrate", () => {
  test("--calibrate measures a table --cost reads; --model plans a generated decoder", () => {
    const out = join(tmp.path, "measured.json");
    const c = atvp("plan", "--calibrate", "--method", "wanda", "--device", "cpu", "--out", out);
    assert.equal(c.status, 0, c.stderr);
    // It says what it prunes as it goes (it takes minutes for every method).
    assert.match(c.stderr, /calibrating wanda: hidden 256, 4 samples \(1\/6\)[\s\S]*calibrating wanda: hidden 1024, 16 samples \(6\/6\)/);
    type Cost = { secondsPerTokenParam: number; secondsPerSample: number; secondsPerCompressUnit: number; tokens: number; blocks: number; widths: number[] };
    const table = JSON.parse(readFileSync(out, "utf8")) as { machine: { device: string }; methods: Record<string, Cost> };
    assert.deepEqual(Object.keys(table.methods), ["wanda"]);
    assert.equal(table.machine.device, "cpu");
    const w = table.methods["wanda"]!;
    // Three widths x two token counts, two blocks fitted of each run (block 0, the warm-up, is not).
    assert.deepEqual([w.widths, w.blocks, w.tokens], [[256, 512, 1024], 12, 16 * 128]);
    const terms = [w.secondsPerTokenParam, w.secondsPerSample, w.secondsPerCompressUnit];
    assert.ok(terms.every((t) => t >= 0) && terms.some((t) => t > 0), JSON.stringify(w));

    const modelDir = join(tmp.path, "m");
    const g = atvp("gen-model", "--layers", "3", "--hidden", "64", "--out", modelDir);
    assert.equal(g.status, 0, g.stderr);
    const p = plan("--model", join(modelDir, "model.onnx"), "--workers", "2", "--worker-memory", "1GiB", "--method", "wanda", "--cost", out, "--replicas", "1");
    assert.equal(p.blocks, 3);
    assert.deepEqual(p.stages.map((s) => [s.firstBlock, s.endBlock]), [[0, 1], [1, 3]]);
    assert.equal(p.boundaryBytesPerSample, 64 * 1500 * 4);
    assert.ok(p.predicted.computeSeconds > 0);
  });
});
