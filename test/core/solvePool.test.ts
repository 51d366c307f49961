/**
 * SolvePool: SparseGPT's factorizations, output energies and updates on solve threads give the
 * bits of the one-thread functions (sparseGptCompressPrepared, prepareHessian) at 1, 2 and 3
 * threads, for linears that share an input and linears of every stored type and layout; the
 * costliest queued task runs first; thread failures come back as the one-thread typed errors;
 * a closed pool refuses work. A sample's Hessian rows split over the threads give the one-thread
 * sum and records; TAMP's densities and AMIA subsets the one-thread values. A factorization run
 * by a team of threads gives prepareHessian's bits and errors.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";
import { addSampleRows, addSampleRowsInChunks, chunkRows, HessianAccumulator, sampleRowsScratch } from "../../services/core/src/prune/hessian.js";
import { prepareHessian, relativeError, sparseGptCompressPrepared, type SparseGptOptions } from "../../services/core/src/prune/sparseGpt.js";
import type { WeightMatrix } from "../../services/core/src/prune/maskSelect.js";
import { INLINE_SOLVER, SolvePool, rowBounds, solvePoolLimits, type Solver } from "../../services/core/src/prune/solvePool.js";
import { OnnxDataType, floatToBfloat16, floatToHalf } from "../../services/core/src/onnx/dtype.js";
import { InvalidArgumentError, NumericError, RuntimeError } from "../../services/core/src/errors.js";
import { sparseGptWorkingBytes } from "../../services/core/src/methods/sparseGpt.js";
import { GRAM_KEEP_BYTES, gramBytes, gramKeptBytes } from "../../services/core/src/prune/gramKernelWasm.js";
import type { LinearInfo } from "../../services/core/src/graph/linears.js";
import { densityOf, normalizeRows } from "../../services/core/src/prune/tampDensity.js";
import { amiaSelect } from "../../services/core/src/prune/amiaSelect.js";
import { abortTeam, balancedShares, evenSplit, isTeamAbort, sharedTeam, teamControl, triangularBounds } from "../../services/core/src/prune/solveTeam.js";

const bits = (a: Float64Array | Uint8Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** H of `n` channels over three samples of random activations (every 5th channel dead), in shared memory as the engine's. */
function hessianOf(seed: number, n: number): Float64Array {
  const rand = mulberry32(seed);
  const acc = new HessianAccumulator(`input${n}`, n);
  for (let s = 0; s < 3; s++) {
    const data = Float32Array.from({ length: 20 * n }, (_, i) => (i % n) % 5 === 2 ? 0 : rand() - 0.5);
    acc.add({ dims: [1, 20, n], data, type: "float32" }, new Uint8Array(20).fill(1), `sample ${s}`);
  }
  return acc.finish(3);
}

function weightOf(seed: number, name: string, n: number, out: number, dataType: number, layout: "in_out" | "out_in"): WeightMatrix {
  const rand = mulberry32(seed);
  const v = Float32Array.from({ length: n * out }, () => (rand() - 0.5) * 0.2);
  const bytes = dataType === OnnxDataType.FLOAT ? new Uint8Array(v.buffer)
    : new Uint8Array(Uint16Array.from(v, (x) => (dataType === OnnxDataType.FLOAT16 ? floatToHalf(x) : floatToBfloat16(x))).buffer);
  return { name, dataType, layout, inDim: n, outDim: out, bytes };
}

/** A block's worth: q/k/v share one input, gate/up another, o and down their own; every type and layout. */
function block(): { hessians: Map<number, Float64Array>; linears: WeightMatrix[] } {
  const hessians = new Map([40, 24, 72].map((n) => [n, hessianOf(n, n)]));
  const linears = [
    weightOf(1, "q", 40, 40, OnnxDataType.FLOAT, "in_out"),
    weightOf(2, "k", 40, 24, OnnxDataType.FLOAT16, "in_out"),
    weightOf(3, "v", 40, 24, OnnxDataType.BFLOAT16, "out_in"),
    weightOf(4, "o", 24, 40, OnnxDataType.FLOAT16, "out_in"),
    weightOf(5, "gate", 40, 72, OnnxDataType.FLOAT, "out_in"),
    weightOf(6, "up", 40, 72, OnnxDataType.FLOAT16, "in_out"),
    weightOf(7, "down", 72, 40, OnnxDataType.BFLOAT16, "in_out"),
  ];
  return { hessians, linears };
}

/** What the engine does per linear (methods/sparseGpt.ts): factor once per input, energy beside it, then update. */
async function compressAll(solver: Solver, hessians: Map<number, Float64Array>, linears: WeightMatrix[], opts: SparseGptOptions) {
  const factored = new Map<number, ReturnType<Solver["factor"]>>();
  return Promise.all(linears.map(async (w) => {
    const h = hessians.get(w.inDim)!;
    if (!factored.has(w.inDim)) factored.set(w.inDim, solver.factor(h, w.inDim, `input${w.inDim}`));
    const [prepared, energy] = await Promise.all([factored.get(w.inDim)!, solver.energy(w, h)]);
    const { bytes, update } = await solver.update(w, prepared, opts);
    return { bytes, pruned: update.pruned, relativeError: relativeError(update.errorEnergy, energy), u: prepared.u };
  }));
}

describe("SolvePool", () => {
  for (const [label, opts] of [["unstructured 50%", { sparsity: 0.5, pattern: { kind: "unstructured" }, blockSize: 16 }], ["2:4", { sparsity: 0.5, pattern: { kind: "nm", n: 2, m: 4 }, blockSize: 8 }]] as const) {
    test(`a block's linears at 1, 2 and 3 threads: the one-thread bits (${label}), dense weights untouched`, async () => {
      const { hessians, linears } = block();
      const dense = linears.map((w) => Buffer.from(w.bytes));
      const expected = linears.map((w) => {
        const copy = { ...w, bytes: w.bytes.slice() };
        const prepared = prepareHessian(hessians.get(w.inDim)!, w.inDim, `input${w.inDim}`);
        const r = sparseGptCompressPrepared(copy, prepared, opts);
        return { bytes: copy.bytes, pruned: r.pruned, relativeError: r.relativeError, u: prepared.u };
      });
      const inline = await compressAll(INLINE_SOLVER, hessians, linears, opts);
      for (const threads of [1, 2, 3]) {
        const pool = new SolvePool(threads);
        try {
          for (const [run, got] of [["first", await compressAll(pool, hessians, linears, opts)], ["second", await compressAll(pool, hessians, linears, opts)]] as const) {
            for (const [i, w] of linears.entries()) {
              const where = `${w.name}, ${threads} threads, ${run} run`;
              assert.ok(bits(got[i]!.bytes).equals(bits(expected[i]!.bytes)), `${where}: weights`);
              assert.equal(got[i]!.pruned, expected[i]!.pruned, where);
              assert.ok(Object.is(got[i]!.relativeError, expected[i]!.relativeError), `${where}: relative error ${got[i]!.relativeError} vs ${expected[i]!.relativeError}`);
              assert.ok(bits(got[i]!.u).equals(bits(expected[i]!.u)), `${where}: U`);
              assert.ok(got[i]!.u.buffer instanceof SharedArrayBuffer, `${where}: U is shared, not copied per linear`);
            }
          }
        } finally {
          await pool.close();
        }
      }
      for (const [i] of linears.entries()) assert.ok(bits(inline[i]!.bytes).equals(bits(expected[i]!.bytes)), `${linears[i]!.name}: inline`);
      linears.forEach((w, i) => assert.ok(Buffer.from(w.bytes).equals(dense[i]!), `${w.name} was modified`));
      assert.ok(expected.some((e) => e.pruned > 0));
    });
  }

  test("the costliest task queued in one turn runs first (one thread: they finish in cost order)", async () => {
    const pool = new SolvePool(1);
    try {
      const h = hessianOf(9, 72);
      const small = weightOf(11, "small", 72, 4, OnnxDataType.FLOAT, "in_out");
      const large = weightOf(12, "large", 72, 64, OnnxDataType.FLOAT, "in_out");
      const order: string[] = [];
      const track = <T>(name: string, p: Promise<T>) => p.then((v) => (order.push(name), v));
      // Submitted smallest first: energy 72²·4/2, factor 72³/3, energy 72²·64/2.
      await Promise.all([track("energy small", pool.energy(small, h)), track("factor", pool.factor(h, 72, "x")), track("energy large", pool.energy(large, h))]);
      assert.deepEqual(order, ["energy large", "factor", "energy small"]);
    } finally {
      await pool.close();
    }
  });

  test("a Hessian that is not positive definite: the one-thread NumericError, naming its input", async () => {
    const h = new Float64Array(new SharedArrayBuffer(4 * 8));
    h.set([1, 2, 2, 1]);
    let inline: unknown;
    try {
      prepareHessian(h.slice(), 2, "model.layers.0.mlp.input");
    } catch (e) {
      inline = e;
    }
    assert.ok(inline instanceof NumericError);
    const pool = new SolvePool(2);
    try {
      await assert.rejects(pool.factor(h, 2, "model.layers.0.mlp.input"), (e: unknown) => e instanceof NumericError && e.subject === "model.layers.0.mlp.input" && e.message === (inline as Error).message);
      // The pool still works after a task failed.
      const good = hessianOf(3, 24);
      const prepared = await pool.factor(good, 24, "x");
      assert.ok(bits(prepared.u).equals(bits(prepareHessian(good, 24, "x").u)));
    } finally {
      await pool.close();
    }
  });

  test("options the update refuses: the one-thread InvalidArgumentError", async () => {
    const pool = new SolvePool(2);
    try {
      const h = hessianOf(5, 40);
      const prepared = await pool.factor(h, 40, "x");
      const w = weightOf(6, "model.layers.0.self_attn.q_proj.weight", 40, 8, OnnxDataType.FLOAT, "in_out");
      await assert.rejects(pool.update(w, prepared, { sparsity: 1.5, pattern: { kind: "unstructured" } }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "sparsity");
      const w3 = weightOf(7, "model.layers.0.mlp.down_proj.weight", 40, 8, OnnxDataType.FLOAT, "in_out");
      await assert.rejects(pool.update(w3, prepared, { sparsity: 0.5, pattern: { kind: "nm", n: 2, m: 3 } }), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "model.layers.0.mlp.down_proj.weight" && /not a multiple of M=3/.test(e.message));
    } finally {
      await pool.close();
    }
  });

  test("closing while a task runs rejects it with RuntimeError; a closed pool refuses work", async () => {
    const pool = new SolvePool(1);
    const h = hessianOf(8, 160);
    const running = pool.factor(h, 160, "x");
    const queued = pool.energy(weightOf(9, "w", 160, 160, OnnxDataType.FLOAT, "in_out"), h);
    await new Promise((r) => setImmediate(r));
    const rejected = [assert.rejects(running, (e: unknown) => e instanceof RuntimeError && /closed/.test(e.message)), assert.rejects(queued, (e: unknown) => e instanceof RuntimeError)];
    await pool.close();
    await Promise.all(rejected);
    await assert.rejects(pool.factor(h, 160, "x"), (e: unknown) => e instanceof RuntimeError && /closed/.test(e.message));
  });

  test("a thread count that is not a positive integer is refused naming maskThreads", () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) assert.throws(() => new SolvePool(bad), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "maskThreads");
  });
});

describe("SparseGPT's working memory with solve threads", () => {
  test("each thread adds the widest linear's work (two in×in and four float64 copies) and the Gram memory it keeps, by hand", () => {
    const linear = { nodeIndex: 0, node: "n", op: "MatMul", weight: "w", activation: "x", dataType: OnnxDataType.FLOAT, layout: "in_out", inDim: 4, outDim: 2 } as LinearInfo;
    // widest = 2·8·4² + 4·8·4·2 = 256 + 256 bytes; the Gram memory: (2 + 32 rows) × 8 padded
    // channels × 8 bytes = 2176, one 64 KiB page
    assert.equal(gramBytes(4, 2), 65536);
    assert.equal(sparseGptWorkingBytes([linear], 2) - sparseGptWorkingBytes([linear], 1), 512 + 65536);
    assert.equal(sparseGptWorkingBytes([linear], 3) - sparseGptWorkingBytes([linear]), 2 * (512 + 65536));
  });

  test("a Gram memory past GRAM_KEEP_BYTES is not kept, so it is not counted beside the work", () => {
    assert.equal(gramKeptBytes(GRAM_KEEP_BYTES), GRAM_KEEP_BYTES);
    assert.equal(gramKeptBytes(GRAM_KEEP_BYTES + 65536), 0);
    // Llama-3-8B's gate_proj (4096 x 14336): (14336 + 32) × 4104 × 8 bytes, ~472 MB: dropped after each call.
    assert.ok(gramBytes(4096, 14336) > GRAM_KEEP_BYTES);
    const wide = { nodeIndex: 0, node: "n", op: "MatMul", weight: "w", activation: "x", dataType: OnnxDataType.FLOAT16, layout: "in_out", inDim: 4096, outDim: 14336 } as LinearInfo;
    assert.equal(sparseGptWorkingBytes([wide], 2) - sparseGptWorkingBytes([wide], 1), 2 * 8 * 4096 ** 2 + 4 * 8 * 4096 * 14336);
  });
});

describe("a sample's Hessian rows on the solve threads", () => {
  test("row ranges of about equal entries, at even rows (by hand)", () => {
    // n = 10: 55 entries; row i has 10 - i.
    assert.deepEqual(rowBounds(10, 1), [0, 10]);
    assert.deepEqual(rowBounds(10, 2), [0, 4, 10]); // 34 | 21 (2 would give 19 | 36)
    assert.deepEqual(rowBounds(10, 3), [0, 2, 4, 10]); // 19 | 15 | 21
    assert.deepEqual(rowBounds(3, 4), [0, 2, 3]); // too few rows: empty ranges dropped
    assert.deepEqual(rowBounds(1, 2), [0, 1]);
  });

  test("HessianAccumulator.add split over 2 and 3 threads: the one-thread sum and records, float32 and float16, odd widths", async () => {
    const saved = solvePoolLimits.rowsWork;
    solvePoolLimits.rowsWork = 0;
    const pools = [new SolvePool(2), new SolvePool(3)];
    try {
      for (const [n, half] of [[37, false], [130, true], [261, false]] as const) {
        const rand = mulberry32(n);
        const samples = Array.from({ length: 3 }, () => {
          const v = Float32Array.from({ length: 23 * n }, (_, i) => ((i % n) % 7 === 3 || rand() < 0.1 ? 0 : (rand() - 0.5) * 2 ** Math.floor(rand() * 6 - 3)));
          const act = half ? { dims: [1, 23, n], data: Uint16Array.from(v, (x) => floatToHalf(x)), type: "float16" as const } : { dims: [1, 23, n], data: v, type: "float32" as const };
          return { act, pool: Uint8Array.from({ length: 23 }, () => (rand() < 0.8 ? 1 : 0)) };
        });
        // With records kept (a replica's whole matrix per sample) and without (chunks of rows).
        const run = async (pool: SolvePool | undefined, keep: boolean) => {
          const acc = new HessianAccumulator("x", n);
          if (keep) acc.keepRecords();
          const records: Float64Array[] = [];
          for (const [j, s] of samples.entries()) {
            const added = acc.add(s.act, s.pool, `sample ${j}`, pool);
            assert.equal(added instanceof Promise, pool !== undefined, "the pool takes the rows (limit lowered)");
            await added;
            if (keep) records.push(acc.record());
          }
          return { records, h: acc.finish(3) };
        };
        const one = await run(undefined, true);
        assert.ok(bits((await run(undefined, false)).h).equals(bits(one.h)), `n=${n}, half=${half}, 1 thread, no records: H`);
        for (const pool of pools) {
          for (const keep of [true, false]) {
            const got = await run(pool, keep);
            const where = `n=${n}, half=${half}, ${pool.threads} threads, records ${keep}`;
            assert.ok(bits(got.h).equals(bits(one.h)), `${where}: H`);
            got.records.forEach((r, j) => assert.ok(bits(r).equals(bits(one.records[j]!)), `${where}: record ${j}`));
          }
        }
      }
      // A NaN is refused before any thread starts, naming the token and channel as on one thread.
      const act = { dims: [1, 2, 40], data: new Float32Array(80).fill(1), type: "float32" as const };
      act.data[40 + 7] = Number.NaN;
      const acc = new HessianAccumulator("x", 40);
      assert.throws(() => acc.add(act, new Uint8Array([1, 1]), "sample 0", pools[0]), (e: unknown) => e instanceof NumericError && /NaN or Inf in the activations \(token 1, channel 7\)/.test(e.message));
    } finally {
      solvePoolLimits.rowsWork = saved;
      for (const p of pools) await p.close();
    }
  });

  test("a sample's matrix a chunk of rows at a time: the bits of the whole matrix, odd widths and chunks, float32 and float16", () => {
    for (const [n, half, chunk] of [[101, false, 32], [101, true, 64], [64, false, 32], [7, false, 32]] as const) {
      const rand = mulberry32(n + chunk);
      const v = Float32Array.from({ length: 9 * n }, () => (rand() < 0.15 ? 0 : (rand() - 0.5) * 2 ** Math.floor(rand() * 8 - 4)));
      const src = { n, data: half ? Uint16Array.from(v, (x) => floatToHalf(x)) : v, half, pool: Uint8Array.from({ length: 9 }, (_, t) => (t % 4 === 1 ? 0 : 1)) };
      // Σ starts from an earlier sample's, so the additions into it are checked too.
      const start = Float64Array.from({ length: n * n }, () => rand());
      const whole = start.slice();
      addSampleRows(new Float64Array(n * n), whole, src, 0, n, sampleRowsScratch(n));
      const chunked = start.slice();
      addSampleRowsInChunks(chunked, src, 0, n, sampleRowsScratch(n), new Float64Array(Math.min(chunk, n + (n % 2)) * n));
      assert.ok(bits(chunked).equals(bits(whole)), `n=${n}, half=${half}, chunks of ${chunk} rows`);
    }
    // 32 MiB of rows: two chunks at 2,080 channels, one below 2,048.
    assert.deepEqual([chunkRows(2080), chunkRows(2048), chunkRows(1000), chunkRows(7)], [2016, 2048, 1000, 8]);
  });

  test("HessianAccumulator at 2,080 channels (two chunks) gives the bits it gives keeping records", () => {
    const n = 2080;
    const rand = mulberry32(5);
    const act = { dims: [1, 3, n], data: Float32Array.from({ length: 3 * n }, () => rand() - 0.5), type: "float32" as const };
    const pool = Uint8Array.from([1, 0, 1]);
    const kept = new HessianAccumulator("x", n);
    kept.keepRecords();
    const chunked = new HessianAccumulator("x", n);
    for (const acc of [kept, chunked]) for (let j = 0; j < 2; j++) acc.add(act, pool, `sample ${j}`);
    assert.ok(bits(chunked.finish(2)).equals(bits(kept.finish(2))));
    // What the planner counts: Σ and a chunk, against Σ and a whole matrix with records.
    assert.equal(HessianAccumulator.bytes(n), 8 * n * n + 8 * 2016 * n + 8 * n);
    assert.equal(HessianAccumulator.bytes(n, true), 2 * 8 * n * n + 8 * n);
  });

  test("a small sample stays on the calling thread", () => {
    const pool = new SolvePool(2);
    const acc = new HessianAccumulator("x", 8);
    const added = acc.add({ dims: [1, 4, 8], data: new Float32Array(32).fill(0.5), type: "float32" }, new Uint8Array(4).fill(1), "sample 0", pool);
    assert.equal(added, undefined);
    return pool.close();
  });
});

describe("TAMP's token work on the solve threads", () => {
  test("density and AMIA subsets at 2 threads: the one-thread values, many at once", async () => {
    const pool = new SolvePool(2);
    try {
      const rand = mulberry32(17);
      const cases = Array.from({ length: 6 }, (_, k) => {
        const tokens = 9 + 5 * k;
        const dim = 16 + 7 * k;
        const data = Float64Array.from({ length: tokens * dim }, () => rand() - 0.5);
        const visual = Uint8Array.from({ length: tokens }, (_, t) => (t >= 2 && t < 2 + tokens / 2 ? 1 : 0));
        const attention = Float64Array.from({ length: tokens }, () => rand() / tokens);
        return { rows: { data, tokens, dim }, visual, attention };
      });
      const expected = cases.map((c) => ({ density: densityOf(normalizeRows(c.rows), c.rows.dim, c.visual), amia: amiaSelect(c.rows, c.attention, c.visual) }));
      // Copies: the pool moves the rows it is given.
      const copy = (c: (typeof cases)[number]) => ({ ...c.rows, data: c.rows.data.slice() });
      const got = await Promise.all(cases.map(async (c) => ({ density: await pool.density(copy(c), c.visual), amia: await pool.amia(copy(c), c.attention, c.visual) })));
      got.forEach((g, i) => {
        for (const key of ["v", "l", "vl"] as const) assert.ok(Object.is(g.density[key], expected[i]!.density[key]), `case ${i}: ${key}`);
        assert.deepEqual(g.amia.order, expected[i]!.amia.order, `case ${i}: AMIA order`);
        assert.deepEqual([...g.amia.selected], [...expected[i]!.amia.selected], `case ${i}: AMIA subset`);
        assert.ok(Object.is(g.amia.rho, expected[i]!.amia.rho), `case ${i}: rho`);
      });
      assert.ok(expected.some((e) => e.amia.selected.some((x) => x === 0)), "some subset leaves tokens out");
    } finally {
      await pool.close();
    }
  });
});

/** hessianOf with the entries between even and odd channels zeroed (still positive semidefinite): L and L⁻¹ then hold zeros. */
function splitHessianOf(seed: number, n: number): Float64Array {
  const h = hessianOf(seed, n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if ((i + j) % 2 === 1) h[i * n + j] = 0;
  return h;
}

describe("a factorization run by a team of solve threads", () => {
  const withTeams = async (threads: number, run: (pool: SolvePool) => Promise<void>) => {
    const saved = solvePoolLimits.teamInputs;
    solvePoolLimits.teamInputs = 1;
    const pool = new SolvePool(threads);
    try {
      await run(pool);
    } finally {
      solvePoolLimits.teamInputs = saved;
      await pool.close();
    }
  };

  for (const threads of [2, 3]) {
    test(`${threads} threads: prepareHessian's bits, for odd and even widths, dead inputs and zeros in the factors`, async () => {
      await withTeams(threads, async (pool) => {
        for (const [n, make] of [[1, hessianOf], [2, hessianOf], [7, hessianOf], [41, splitHessianOf], [130, hessianOf], [203, splitHessianOf]] as const) {
          const h = make(n + threads, n);
          const want = prepareHessian(h.slice(), n, `input${n}`);
          // Twice: the second with the split the pool learnt from the first.
          for (let round = 0; round < 2; round++) {
            const got = await pool.factor(h, n, `input${n}`);
            assert.ok(bits(got.u).equals(bits(want.u)), `U of ${n} inputs, round ${round}`);
            assert.ok(bits(got.dead).equals(bits(want.dead)), `dead inputs of ${n}, round ${round}`);
          }
        }
      });
    });
  }

  test("a Hessian that is not positive definite: the one-thread NumericError from the team, and the pool goes on", async () => {
    await withTeams(2, async (pool) => {
      const h = hessianOf(11, 30);
      h[17 * 30 + 17] = -1;
      let inline: unknown;
      try {
        prepareHessian(h.slice(), 30, "model.layers.3.mlp.down_proj.input");
      } catch (e) {
        inline = e;
      }
      assert.ok(inline instanceof NumericError);
      await assert.rejects(pool.factor(h, 30, "model.layers.3.mlp.down_proj.input"), (e: unknown) => e instanceof NumericError && e.message === (inline as Error).message);
      const good = hessianOf(12, 30);
      assert.ok(bits((await pool.factor(good, 30, "x")).u).equals(bits(prepareHessian(good, 30, "x").u)));
    });
  });

  test("a member told that another failed stops at its barrier with the team's abort error", () => {
    const control = teamControl();
    abortTeam(control);
    assert.throws(() => sharedTeam(control, 0, 2).sync(), (e: unknown) => e instanceof RuntimeError && isTeamAbort(e));
  });

  test("splits by hand: equal modelled work, bounds aligned; shares learnt from times", () => {
    // (n − i)² work: half of it lies below n·(1 − ∛½) = 1.65 of 8 items.
    assert.deepEqual(triangularBounds(8, [0.5, 0.5]), [0, 2, 8]);
    assert.deepEqual(triangularBounds(100, [0.5, 0.5], 2), [0, 20, 100]);
    assert.deepEqual(triangularBounds(10, [1 / 3, 1 / 3, 1 / 3]), [0, 1, 3, 10]);
    assert.deepEqual(triangularBounds(10, [1]), [0, 10]);
    // Speeds 0.5/100 and 0.5/300 balance at 3/4 and 1/4; half way from the even split.
    assert.deepEqual(balancedShares([0.5, 0.5], [100, 300]), [0.625, 0.375]);
    assert.deepEqual(evenSplit(2), { inverse: [0.5, 0.5], product: [0.5, 0.5] });
  });
});
