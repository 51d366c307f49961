/**
 * Same bits in every configuration: MaskPool at 1, 2 and 3 threads against the single-thread
 * kernel as it was (test/support/maskSelectReference.ts) and against the stable-sort reference,
 * on random matrices with many ties, every stored type and layout, unstructured and N:M, and a
 * batch mixing column- and matrix-scope jobs. Errors are the same typed errors too.
 */
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../support/fixtures.js";
import { mulberry32 } from "../../services/core/src/calib/seededRandom.js";
import { LostWeightError, MaskPool, maskPoolLimits, RESIDENT_MAX_BYTES, type MaskJob } from "../../services/core/src/prune/maskPool.js";
import { MaskBuffers } from "../../services/core/src/prune/maskBuffers.js";
import { computeMask, computeMaskColumns, kernelLimits, parsePattern, type MaskOptions } from "../../services/core/src/prune/maskSelect.js";
import { OnnxDataType } from "../../services/core/src/onnx/dtype.js";
import { InvalidArgumentError, NumericError, RuntimeError } from "../../services/core/src/errors.js";
import { computeMask as previousComputeMask } from "../support/maskSelectReference.js";
import { KERNEL_INPUT_AT, MaskKernel, maskKernel, maskKernelModule, sharedKernelMemory } from "../../services/core/src/prune/maskKernelWasm.js";
import { referenceMask, rowsOf, weight } from "../support/maskContract.js";

const TYPES = [OnnxDataType.FLOAT, OnnxDataType.FLOAT16, OnnxDataType.BFLOAT16];
const pools = [1, 2, 3].map((n) => MaskPool.start(n));
after(() => Promise.all(pools.map((p) => p.close())));

type ValueKind = "ties" | "continuous" | "wide";

/**
 * "ties": a tiny set (ties in |W| and, with the tiny scales, in M); "continuous": a spread like a
 * trained layer's; "wide": 2^-40 .. 2^15 with zeros and infinities, so float16 and bfloat16 hold
 * subnormals and infinities, whose widening the WebAssembly kernel does without a table.
 */
function randomRows(rand: () => number, inDim: number, outDim: number, kind: ValueKind | boolean): number[][] {
  const tiny = [0, -0, 0.5, -0.5, 1, -1, 2, -2];
  const k = kind === true ? "ties" : kind === false ? "continuous" : kind;
  const value = (): number => {
    if (k === "ties") return tiny[Math.floor(rand() * 8)]!;
    if (k === "continuous") return (rand() + rand() + rand() - 1.5) * 0.1;
    const u = rand();
    if (u < 0.05) return u < 0.025 ? Infinity : -Infinity;
    if (u < 0.15) return 0;
    return (rand() - 0.5) * 2 ** Math.floor(rand() * 55 - 40);
  };
  return Array.from({ length: inDim }, () => Array.from({ length: outDim }, value));
}

/** Tiny scales include 0, which would make 0 * inf a NaN: "wide" values get positive scales. */
function randomScale(rand: () => number, inDim: number, kind: ValueKind | boolean): Float64Array {
  const ties = kind === true || kind === "ties";
  return Float64Array.from({ length: inDim }, () => (ties ? [0, 0.25, 1, 4][Math.floor(rand() * 4)]! : 1e-4 + rand() * rand() * 4));
}

describe("MaskPool gives computeMask's bits at every thread count", () => {
  const rand = mulberry32(99);
  // Shapes whose column counts split unevenly, or not at all, across threads.
  const shapes: Array<[number, number]> = [[8, 1], [16, 33], [64, 70], [96, 130], [520, 48]];
  for (const ties of ["ties", "continuous", "wide"] as const) {
    test(`random batches, ${ties} values`, async () => {
      for (const [inDim, outDim] of shapes) {
        const rows = randomRows(rand, inDim, outDim, ties);
        const scale = randomScale(rand, inDim, ties);
        for (const dataType of TYPES) {
          for (const layout of ["in_out", "out_in"] as const) {
            const w = weight(rows, dataType, layout, `l${inDim}x${outDim}`);
            const options: MaskOptions[] = [
              { sparsity: 0.5, pattern: { kind: "unstructured" } },
              { sparsity: rand(), pattern: { kind: "unstructured" } },
              ...(inDim % 4 === 0 ? [{ sparsity: 0.5, pattern: parsePattern("2:4") }] : []),
              ...(inDim % 8 === 0 ? [{ sparsity: 0.5, pattern: parsePattern("4:8") }] : []),
            ];
            const batch: MaskJob[] = [
              ...options.map((o) => ({ weight: w, scale, options: o })),
              { weight: w, scale: null, options: { sparsity: 0.5, pattern: { kind: "unstructured" }, scope: "matrix" } },
              { weight: w, scale: null, options: { sparsity: 0.3, pattern: { kind: "unstructured" }, scope: "column" } },
            ];
            const expected = batch.map((j) => previousComputeMask(j.weight, j.scale, j.options));
            batch.forEach((j, i) => {
              const label = `${inDim}x${outDim} type ${dataType} ${layout} job ${i}`;
              assert.deepEqual(rowsOf(w, expected[i]!.mask), referenceMask(w, j.scale, j.options), `previous kernel vs stable sort, ${label}`);
            });
            for (const pool of pools) {
              const got = await pool.computeMasks(batch);
              got.forEach((r, i) => {
                const label = `${pool.threads} threads, ${inDim}x${outDim} type ${dataType} ${layout} job ${i}`;
                assert.deepEqual(Buffer.from(r.mask), Buffer.from(expected[i]!.mask), label);
                assert.equal(r.pruned, expected[i]!.pruned, label);
                assert.equal(r.total, inDim * outDim, label);
              });
            }
          }
        }
      }
    });
  }

  test("any split of the columns into ranges gives the whole mask", () => {
    const rand = mulberry32(5);
    const rows = randomRows(rand, 64, 37, true);
    const scale = randomScale(rand, 64, true);
    for (const dataType of TYPES) {
      for (const layout of ["in_out", "out_in"] as const) {
        const w = weight(rows, dataType, layout);
        for (const options of [{ sparsity: 0.4, pattern: { kind: "unstructured" } }, { sparsity: 0.5, pattern: parsePattern("4:8") }] as MaskOptions[]) {
          const whole = computeMask(w, scale, options);
          const mask = new Uint8Array(64 * 37);
          let pruned = 0;
          for (const [b, e] of [[0, 5], [5, 6], [6, 6], [6, 30], [30, 37]] as const) pruned += computeMaskColumns(w, scale, options, b, e, mask);
          assert.deepEqual(mask, whole.mask);
          assert.equal(pruned, whole.pruned);
        }
      }
    }
  });
});

describe("weights copied to the threads while they run", () => {
  // Taller than a notice of copied rows (128) and not a multiple of it, wide enough for several
  // 16-column tiles per thread: the threads' WebAssembly kernels read rows as they arrive.
  const rand = mulberry32(77);
  const rows = randomRows(rand, 1000, 200, "continuous");
  const scale = randomScale(rand, 1000, "continuous");

  test("one linear split by column ranges gives the same masks at 1, 2 and 3 threads (unstructured, 2:4, magnitude matrix scope)", async () => {
    for (const dataType of TYPES) {
      for (const layout of ["in_out", "out_in"] as const) {
        const w = weight(rows, dataType, layout, "tall");
        const jobs: MaskJob[] = [
          { weight: w, scale, options: { sparsity: 0.5, pattern: { kind: "unstructured" } } },
          { weight: w, scale, options: { sparsity: 0.5, pattern: parsePattern("2:4") } },
          { weight: w, scale: null, options: { sparsity: 0.5, pattern: { kind: "unstructured" }, scope: "matrix" } },
        ];
        for (const job of jobs) {
          const expected = previousComputeMask(job.weight, job.scale, job.options);
          for (const pool of pools) {
            const [got] = await pool.computeMasks([job]);
            const label = `${pool.threads} threads, type ${dataType} ${layout} ${job.options.scope ?? "column"} ${job.options.pattern.kind}`;
            assert.ok(Buffer.from(got!.mask).equals(Buffer.from(expected.mask)), label);
            assert.equal(got!.pruned, expected.pruned, label);
          }
        }
      }
    }
  });

  test("whatever split the pool learns or starts from, the same masks: its own thread only copying (copy cost 5), or keeping most (copy cost 0)", async () => {
    // Large enough for the pool to learn from (MIN_LEARNING_PARAMS).
    const r = mulberry32(5);
    const w = weight(randomRows(r, 1024, 1040, "continuous"), OnnxDataType.FLOAT16, "in_out", "split");
    const scale = randomScale(r, 1024, "continuous");
    const job: MaskJob = { weight: w, scale, options: { sparsity: 0.5, pattern: { kind: "unstructured" } } };
    const expected = previousComputeMask(job.weight, job.scale, job.options);
    for (const [threads, copyCost] of [[2, 5], [3, 5], [2, 0], [3, 0]] as const) {
      const pool = MaskPool.start(threads, copyCost);
      try {
        const first = pool.shares();
        assert.equal(first[0], copyCost === 5 ? 0 : 1 / threads, `${threads} threads, copy cost ${copyCost}: ${first}`);
        for (let i = 0; i < 6; i++) {
          const [got] = await pool.computeMasks([job]);
          assert.ok(Buffer.from(got!.mask).equals(Buffer.from(expected.mask)), `${threads} threads, copy cost ${copyCost}, batch ${i} (split ${pool.shares()})`);
          assert.equal(got!.pruned, expected.pruned);
        }
        // It learnt from those batches (all but the first three, its warm-up): a split still, not the one it started from.
        const learnt = pool.shares();
        assert.ok(learnt.every((x) => x >= 0) && Math.abs(learnt.reduce((a, b) => a + b, 0) - 1) < 1e-9, `${learnt}`);
        assert.notDeepEqual(learnt, first);
      } finally {
        await pool.close();
      }
    }
  });

  test("a batch larger than the threads' memories goes in groups, a larger linear on the pool's thread: the same masks", async () => {
    const small = weight(randomRows(mulberry32(31), 64, 48, "continuous"), OnnxDataType.FLOAT16, "in_out", "small");
    const large = weight(rows, OnnxDataType.FLOAT, "in_out", "large");
    const options: MaskOptions = { sparsity: 0.5, pattern: { kind: "unstructured" } };
    const batch: MaskJob[] = [small, small, large, small].map((w) => ({ weight: w, scale: null, options }));
    const saved = maskPoolLimits.sharedBytes;
    // Two small weights fit together; the large one fits nowhere.
    maskPoolLimits.sharedBytes = 2 * small.bytes.byteLength;
    try {
      for (const pool of pools) {
        const got = await pool.computeMasks(batch);
        got.forEach((r, i) => {
          const expected = computeMask(batch[i]!.weight, null, options);
          assert.ok(Buffer.from(r.mask).equals(Buffer.from(expected.mask)), `${pool.threads} threads, job ${i}`);
          assert.equal(r.pruned, expected.pruned);
        });
      }
    } finally {
      maskPoolLimits.sharedBytes = saved;
    }
  });

  test("computeMaskColumns asks for every row before it reads it", () => {
    // The weight starts as zeros and each row's bytes arrive only when asked for: a row read
    // before it was asked for would be read as zeros and change the mask.
    for (const dataType of TYPES) {
      for (const layout of ["in_out", "out_in"] as const) {
        const full = weight(rows, dataType, layout, "arriving");
        const rowBytes = full.bytes.byteLength / full.inDim;
        for (const options of [{ sparsity: 0.4, pattern: { kind: "unstructured" } }, { sparsity: 0.5, pattern: parsePattern("2:4") }] as MaskOptions[]) {
          const whole = computeMask(full, scale, options);
          const arriving = { ...full, bytes: new Uint8Array(full.bytes.byteLength) };
          let arrived = 0;
          const asked: number[] = [];
          const awaitRows = (r: number): void => {
            asked.push(r);
            if (r <= arrived) return;
            // [in, out] storage holds input row c at c * rowBytes; [out, in] needs every row at once.
            if (layout === "in_out") arriving.bytes.set(full.bytes.subarray(arrived * rowBytes, r * rowBytes), arrived * rowBytes);
            else if (r === full.inDim) arriving.bytes.set(full.bytes);
            else return;
            arrived = r;
          };
          const mask = new Uint8Array(full.inDim * full.outDim);
          const pruned = computeMaskColumns(arriving, scale, options, 48, 176, mask, awaitRows);
          const label = `type ${dataType} ${layout} ${options.pattern.kind}`;
          for (let c = 0; c < full.inDim; c++) {
            for (let o = 48; o < 176; o++) {
              const i = layout === "in_out" ? c * full.outDim + o : o * full.inDim + c;
              if (mask[i] !== whole.mask[i]) assert.fail(`${label}: input ${c}, output ${o} differs`);
            }
          }
          assert.ok(pruned > 0, label);
          assert.equal(arrived, full.inDim, label);
          assert.ok(asked.every((r, i) => i === 0 || r >= asked[i - 1]! || r === full.inDim), `${label}: rows asked in order`);
        }
      }
    }
  });
});

describe("the WebAssembly kernel", () => {
  test("is available here, so the tests above ran it (16-column tiles of [in, out] weights)", () => {
    assert.ok(maskKernel(), "WebAssembly SIMD is unavailable: only the JavaScript kernel was tested");
    // The mask threads' kernels import a shared memory (a module of their own).
    const shared = MaskKernel.create(sharedKernelMemory(KERNEL_INPUT_AT + 65536));
    const inside = new Uint8Array(shared.memory.buffer, KERNEL_INPUT_AT, 64);
    assert.equal(shared.addressOf(inside), KERNEL_INPUT_AT);
    assert.equal(shared.addressOf(new Uint8Array(64)), null);
  });

  test("its module is assembled from source, the same bytes every time", () => {
    assert.deepEqual(maskKernelModule(), maskKernelModule());
    const wasm = (globalThis as unknown as { WebAssembly: { validate(bytes: Uint8Array): boolean } }).WebAssembly;
    assert.ok(wasm.validate(maskKernelModule()));
    assert.ok(wasm.validate(maskKernelModule(true)));
  });

  test("a linear wider than the kernel's memory budget is done in panels, with the same bits", () => {
    const rows = randomRows(mulberry32(21), 96, 200, "continuous");
    const scale = randomScale(mulberry32(22), 96, "continuous");
    const saved = kernelLimits.memoryBudget;
    try {
      for (const dataType of TYPES) {
        const w = weight(rows, dataType, "in_out");
        const options: MaskOptions = { sparsity: 0.45, pattern: { kind: "unstructured" } };
        const expected = previousComputeMask(w, scale, options).mask;
        // Room for the per-row scratch plus 1, 2 or 5 tiles of columns per panel.
        const perRow = 16 * 4096 * 4 + 96 * (2 * 16 * 4 + 4 + 8) + 4096;
        const perColumn = 96 * (2 * (dataType === OnnxDataType.FLOAT ? 4 : 2) + 2);
        for (const panelTiles of [1, 2, 5]) {
          kernelLimits.memoryBudget = perRow + perColumn * 16 * panelTiles;
          assert.deepEqual(computeMask(w, scale, options).mask, expected, `type ${dataType}, ${panelTiles} tiles per panel`);
          const part = new Uint8Array(96 * 200);
          computeMaskColumns(w, scale, options, 37, 180, part);
          for (let c = 0; c < 96; c++) {
            assert.deepEqual(part.subarray(c * 200 + 37, c * 200 + 180), expected.subarray(c * 200 + 37, c * 200 + 180), `row ${c}, columns 37..180`);
          }
        }
      }
    } finally {
      kernelLimits.memoryBudget = saved;
    }
  });

  test("a NaN metric found by the kernel is reported as the JavaScript kernel reports it", () => {
    const rows = randomRows(mulberry32(12), 40, 48, false);
    rows[33]![17] = NaN;
    for (const dataType of TYPES) {
      const w = weight(rows, dataType, "in_out", "nan-layer");
      const options: MaskOptions = { sparsity: 0.5, pattern: { kind: "unstructured" } };
      let expected = "";
      try {
        previousComputeMask(w, null, options);
      } catch (err) {
        expected = (err as Error).message;
      }
      assert.match(expected, /NaN at input 33, output 17/);
      assert.throws(() => computeMask(w, null, options), (e: unknown) => e instanceof NumericError && e.message === expected);
    }
  });
});

describe("a block's calls as one batch, lent weights moved to the threads", () => {
  // A block's worth of linears of different sizes, types and layouts, each in a buffer of its own.
  const rand = mulberry32(2024);
  const shapes: Array<[number, number, number, "in_out" | "out_in"]> = [
    [256, 160, OnnxDataType.FLOAT16, "in_out"], [256, 48, OnnxDataType.FLOAT16, "in_out"], [256, 48, OnnxDataType.BFLOAT16, "in_out"],
    [160, 256, OnnxDataType.FLOAT, "in_out"], [256, 400, OnnxDataType.FLOAT16, "out_in"], [400, 256, OnnxDataType.FLOAT16, "in_out"],
  ];
  const block = () => shapes.map(([inDim, outDim, dataType, layout], i) => ({
    w: weight(randomRows(rand, inDim, outDim, "continuous"), dataType, layout, `linear${i}`),
    scale: randomScale(rand, inDim, "continuous"),
  }));
  const options: MaskOptions = { sparsity: 0.5, pattern: { kind: "unstructured" } };

  test("every linear's mask is computeMask's, its bytes are back unchanged, and at 2 and 3 threads some moved (their old buffers are detached)", async () => {
    for (const pool of pools) {
      for (let round = 0; round < 5; round++) { // later rounds run with learnt shares
        const linears = block();
        const before = linears.map(({ w }) => ({ bytes: Buffer.from(w.bytes), buffer: w.bytes.buffer }));
        const expected = linears.map(({ w, scale }) => previousComputeMask(w, scale, options));
        // As the engine calls it: one call per linear, all in one turn.
        const got = await Promise.all(linears.map(({ w, scale }) => pool.computeMasks([{ weight: w, scale, options, lend: true }])));
        let moved = 0;
        linears.forEach(({ w }, i) => {
          const label = `${pool.threads} threads, round ${round}, ${w.name}`;
          assert.ok(Buffer.from(got[i]![0]!.mask).equals(Buffer.from(expected[i]!.mask)), label);
          assert.equal(got[i]![0]!.pruned, expected[i]!.pruned, label);
          assert.ok(Buffer.from(w.bytes).equals(before[i]!.bytes), `bytes back, ${label}`);
          assert.equal(w.bytes.byteLength, before[i]!.bytes.byteLength, label);
          if (w.bytes.buffer !== before[i]!.buffer) {
            moved++;
            assert.equal(before[i]!.buffer.byteLength, 0, `the old buffer is detached, ${label}`);
          }
        });
        if (pool.threads === 1) assert.equal(moved, 0);
        else assert.ok(moved >= pool.threads - 1, `${pool.threads} threads, round ${round}: ${moved} moved`);
      }
    }
  });

  test("weights not lent, viewing part of a buffer, or sharing one are copied, never moved: the same masks", async () => {
    const [a, b, c] = block();
    const wide = new Uint8Array(a!.w.bytes.byteLength + 64);
    wide.set(a!.w.bytes, 32);
    const partial = { ...a!.w, name: "partial", bytes: wide.subarray(32, 32 + a!.w.bytes.byteLength) };
    const jobs: MaskJob[] = [
      { weight: partial, scale: a!.scale, options, lend: true },
      { weight: b!.w, scale: b!.scale, options, lend: true },
      { weight: b!.w, scale: b!.scale, options: { sparsity: 0.25, pattern: { kind: "unstructured" } }, lend: true },
      { weight: c!.w, scale: c!.scale, options },
    ];
    const buffers = jobs.map((j) => j.weight.bytes.buffer);
    for (const pool of pools) {
      const got = await pool.computeMasks(jobs);
      jobs.forEach((j, i) => {
        const expected = previousComputeMask(j.weight, j.scale, j.options);
        assert.ok(Buffer.from(got[i]!.mask).equals(Buffer.from(expected.mask)), `${pool.threads} threads, job ${i}`);
        assert.equal(j.weight.bytes.buffer, buffers[i], `${pool.threads} threads, job ${i} stayed`);
      });
    }
  });

  test("calls of one turn run together, each with its own result: one call's NaN is its own NumericError, the others get their masks", async () => {
    const linears = block();
    const rows = randomRows(mulberry32(6), 64, 48, false);
    rows[10]![7] = NaN;
    const bad = weight(rows, OnnxDataType.FLOAT, "in_out", "bad");
    for (const pool of pools) {
      const calls = [
        pool.computeMasks([{ weight: linears[0]!.w, scale: linears[0]!.scale, options, lend: true }]),
        pool.computeMasks([{ weight: bad, scale: null, options, lend: true }]),
        pool.computeMasks([{ weight: linears[5]!.w, scale: linears[5]!.scale, options, lend: true }, { weight: linears[3]!.w, scale: linears[3]!.scale, options, lend: true }]),
      ];
      const settled = await Promise.allSettled(calls);
      assert.equal(settled[1]!.status, "rejected");
      assert.ok((settled[1] as PromiseRejectedResult).reason instanceof NumericError && (settled[1] as PromiseRejectedResult).reason.subject === "bad");
      // A weight lent to a thread whose task failed is back too.
      assert.equal(bad.bytes.byteLength, 64 * 48 * 4);
      assert.ok(Number.isNaN(new Float32Array(bad.bytes.buffer, bad.bytes.byteOffset, 64 * 48)[10 * 48 + 7]));
      const check = (r: PromiseSettledResult<unknown>, ws: Array<{ w: typeof bad; scale: Float64Array }>) => {
        assert.equal(r.status, "fulfilled", `${pool.threads} threads`);
        (r as PromiseFulfilledResult<Array<{ mask: Uint8Array }>>).value.forEach((m, i) => {
          assert.ok(Buffer.from(m.mask).equals(Buffer.from(previousComputeMask(ws[i]!.w, ws[i]!.scale, options).mask)), `${pool.threads} threads, ${ws[i]!.w.name}`);
        });
      };
      check(settled[0]!, [linears[0]!]);
      check(settled[2]!, [linears[5]!, linears[3]!]);
    }
  });

  test("a thread that ends holding a lent weight: the batch fails with LostWeightError naming it, not a hang", async () => {
    // Large enough that the thread is still selecting when the pool closes under it.
    const big = () => weight(randomRows(mulberry32(12), 1024, 1024, "continuous"), OnnxDataType.FLOAT, "in_out", "big");
    const [x, y] = [big(), { ...big(), name: "big2" }];
    const scale = randomScale(mulberry32(13), 1024, "continuous");
    const pool = MaskPool.start(2);
    const batch = pool.computeMasks([{ weight: x, scale, options, lend: true }, { weight: y, scale, options, lend: true }]);
    const failed = assert.rejects(batch, (e: unknown) => e instanceof LostWeightError && /big/.test(e.subject) && e.weights.length === 1 && e.code === "RUNTIME");
    await new Promise((resolve) => setImmediate(resolve)); // the batch has started: one weight is on the thread
    await pool.close();
    await failed;
  });
});

describe("weights in the pool's weight buffers, read in place by the first thread", () => {
  const rand = mulberry32(808);
  const options: MaskOptions = { sparsity: 0.5, pattern: { kind: "unstructured" } };
  const shapes: Array<[number, number, number, "in_out" | "out_in"]> = [
    [256, 160, OnnxDataType.FLOAT16, "in_out"], [256, 48, OnnxDataType.BFLOAT16, "in_out"], [160, 256, OnnxDataType.FLOAT, "in_out"],
    [256, 400, OnnxDataType.FLOAT16, "out_in"], [400, 256, OnnxDataType.FLOAT16, "in_out"],
  ];
  /** A linear, and the same bytes in one of the pool's weight buffers. */
  const linear = (pool: MaskPool, [inDim, outDim, dataType, layout]: (typeof shapes)[number], name: string) => {
    const w = weight(randomRows(rand, inDim, outDim, "continuous"), dataType, layout, name);
    const bytes = pool.weightBuffer(w.bytes.byteLength);
    assert.ok(bytes, `a weight buffer for ${name}`);
    bytes.set(w.bytes);
    return { plain: w, resident: { ...w, bytes }, scale: randomScale(rand, inDim, "continuous") };
  };

  test("none without threads or once the pool is closed; a freed one comes back for its size; other views are left alone", async () => {
    assert.equal(pools[0]!.weightBuffer(64), null);
    const pool = MaskPool.start(2);
    const b = pool.weightBuffer(64)!;
    assert.ok(b.buffer instanceof SharedArrayBuffer);
    assert.equal(pool.weightBuffer(RESIDENT_MAX_BYTES + 1), null, "past the limit: the caller takes a plain buffer");
    assert.equal(pool.releaseWeightBuffer(new Uint8Array(64)), false);
    assert.equal(pool.releaseWeightBuffer(b), true);
    assert.equal(pool.weightBuffer(64)!.byteOffset, b.byteOffset);
    await pool.close();
    assert.equal(pool.weightBuffer(64), null);
  });

  test("a block's calls and single split linears give computeMask's bits at 2 and 3 threads; the bytes stay where they are; at 2 threads nothing is copied", async () => {
    for (const pool of pools.slice(1)) {
      for (let round = 0; round < 4; round++) { // later rounds run with learnt shares
        const linears = shapes.map((shape, i) => linear(pool, shape, `linear${i}`));
        const views = linears.map((l) => l.resident.bytes);
        const got = await Promise.all(linears.map((l) => pool.computeMasks([{ weight: l.resident, scale: l.scale, options, lend: true }])));
        if (pool.threads === 2) assert.equal(pool.copiedLastBatch, 0, `round ${round}: the first thread read its share in place`);
        linears.forEach((l, i) => {
          const label = `${pool.threads} threads, round ${round}, ${l.plain.name}`;
          const expected = previousComputeMask(l.plain, l.scale, options);
          assert.ok(Buffer.from(got[i]![0]!.mask).equals(Buffer.from(expected.mask)), label);
          assert.equal(got[i]![0]!.pruned, expected.pruned, label);
          assert.equal(l.resident.bytes, views[i], `not moved, ${label}`);
          assert.ok(Buffer.from(l.resident.bytes).equals(Buffer.from(l.plain.bytes)), `bytes unchanged, ${label}`);
        });
        // One linear alone is split by columns between the threads.
        for (const l of linears.slice(3)) {
          const [alone] = await pool.computeMasks([{ weight: l.resident, scale: l.scale, options }]);
          if (pool.threads === 2) assert.equal(pool.copiedLastBatch, 0, `${l.plain.name} alone`);
          assert.ok(Buffer.from(alone!.mask).equals(Buffer.from(previousComputeMask(l.plain, l.scale, options).mask)), `${pool.threads} threads, ${l.plain.name} alone`);
          // The same linear in plain memory: the first thread's columns are copied to it.
          await pool.computeMasks([{ weight: l.plain, scale: l.scale, options }]);
          if (round > 0) assert.ok(pool.copiedLastBatch > 0, `${l.plain.name} in plain memory is copied`);
        }
        for (const v of views) assert.equal(pool.releaseWeightBuffer(v), true);
      }
    }
  });

  test("a weight buffer asked for while a batch runs lies above the batch's copies, which it cannot overwrite", async () => {
    const pool = MaskPool.start(2);
    try {
      const options1: MaskOptions = { sparsity: 0.5, pattern: { kind: "unstructured" } };
      const big = weight(randomRows(mulberry32(31), 1024, 1024, "continuous"), OnnxDataType.FLOAT, "in_out", "big");
      const scale = randomScale(mulberry32(32), 1024, "continuous");
      const probe = pool.weightBuffer(64)!;
      const batch = pool.computeMasks([{ weight: big, scale, options: options1 }]);
      await new Promise((resolve) => setImmediate(resolve)); // the batch has started: its copy is in the first thread's memory
      const during = pool.weightBuffer(64)!;
      assert.ok(during.byteOffset >= probe.byteOffset + 64 + big.bytes.byteLength, `${during.byteOffset} is above the copy`);
      during.fill(0xff);
      const [got] = await batch;
      assert.ok(Buffer.from(got!.mask).equals(Buffer.from(previousComputeMask(big, scale, options1).mask)));
      assert.ok(pool.copiedLastBatch > 0, "the plain weight was copied");
    } finally {
      await pool.close();
    }
  });
});

describe("MaskPool errors", () => {
  test("a NaN metric is the NumericError computeMask throws, naming the layer, at every thread count", async () => {
    const rows = randomRows(mulberry32(3), 32, 40, false);
    rows[20]![35] = NaN;
    const good = weight(randomRows(mulberry32(4), 32, 40, false), OnnxDataType.FLOAT, "in_out", "good");
    const bad = weight(rows, OnnxDataType.FLOAT, "in_out", "bad");
    const options: MaskOptions = { sparsity: 0.5, pattern: { kind: "unstructured" } };
    const batch: MaskJob[] = [{ weight: good, scale: null, options }, { weight: bad, scale: null, options }];
    let single: unknown;
    try {
      computeMask(bad, null, options);
    } catch (err) {
      single = err;
    }
    assert.ok(single instanceof NumericError);
    for (const pool of pools) {
      await assert.rejects(pool.computeMasks(batch), (err: unknown) => err instanceof NumericError && err.subject === "bad" && err.message === (single as Error).message);
      // The pool still works after a failed batch.
      assert.equal((await pool.computeMasks(batch.slice(0, 1)))[0]!.pruned, 16 * 40);
    }
  });

  test("bad options are computeMask's InvalidArgumentError", async () => {
    const w = weight(randomRows(mulberry32(8), 6, 4, false));
    for (const pool of pools) {
      await assert.rejects(pool.computeMasks([{ weight: w, scale: null, options: { sparsity: 1, pattern: { kind: "unstructured" } } }]), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "sparsity");
      await assert.rejects(pool.computeMasks([{ weight: w, scale: null, options: { sparsity: 0.5, pattern: parsePattern("2:4") } }]), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "layer");
    }
  });

  test("a batch in flight keeps the process alive until its last piece is back (idle threads do not)", () => {
    // A script whose only pending work is the batch: it must print its result and exit on its own.
    const pool = new URL("../../services/core/src/prune/maskPool.js", import.meta.url).href;
    const script = `
      import { MaskPool } from ${JSON.stringify(pool)};
      const w = { name: "w", dataType: 1, layout: "in_out", inDim: 64, outDim: 1024, bytes: new Uint8Array(new Float32Array(64 * 1024).map((_, i) => (i * 7919) % 1000).buffer) };
      const p = MaskPool.start(3);
      const [r] = await p.computeMasks([{ weight: w, scale: null, options: { sparsity: 0.5, pattern: { kind: "unstructured" } } }]);
      console.log("pruned", r.pruned);`;
    const dir = tempDir("mask-pool-exit");
    try {
      const file = join(dir.path, "batch.mjs");
      writeFileSync(file, script);
      const r = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 30_000 });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), `pruned ${32 * 1024}`);
    } finally {
      dir.cleanup();
    }
  });

  test("a thread count below 1 is refused naming maskThreads; a closed pool refuses work", async () => {
    for (const n of [0, -1, 1.5, NaN]) assert.throws(() => MaskPool.start(n), (e: unknown) => e instanceof InvalidArgumentError && e.subject === "maskThreads");
    const pool = MaskPool.start(2);
    const w = weight([[1, 2], [3, 4]]);
    const job: MaskJob = { weight: w, scale: null, options: { sparsity: 0.5, pattern: { kind: "unstructured" } } };
    assert.equal((await pool.computeMasks([job]))[0]!.pruned, 2);
    await pool.close();
    await pool.close(); // idempotent
    await assert.rejects(pool.computeMasks([job]), RuntimeError);
  });
});

describe("mask buffers reused from block to block", () => {
  test("computeMask into a dirty buffer of the right size gives the bits of a new one; the wrong size names the weight", () => {
    const rand = mulberry32(7);
    for (const kind of ["ties", "wide"] as const) {
      const rows = randomRows(rand, 48, 40, kind);
      const scale = randomScale(rand, 48, kind);
      for (const dataType of TYPES) {
        for (const options of [{ sparsity: 0.5, pattern: { kind: "unstructured" as const } }, { sparsity: 0.5, pattern: parsePattern("2:4") }]) {
          const w = weight(rows, dataType, "in_out", "reused");
          const fresh = computeMask(w, scale, options);
          const dirty = new Uint8Array(48 * 40).fill(1);
          const reused = computeMask(w, scale, options, dirty);
          assert.equal(reused.mask, dirty, "written into the given buffer");
          assert.deepEqual([...reused.mask], [...fresh.mask]);
          assert.equal(reused.pruned, fresh.pruned);
        }
      }
    }
    const w = weight(randomRows(rand, 8, 4, "continuous"), OnnxDataType.FLOAT, "in_out", "model.layers.3.mlp.up_proj");
    assert.throws(() => computeMask(w, null, { sparsity: 0.5, pattern: { kind: "unstructured" } }, new Uint8Array(31)), /model\.layers\.3\.mlp\.up_proj.*31 bytes does not fit a 8x4 weight/);
  });

  test("the pool's threads write into a dirty shared buffer the bits of a new one (k = 0, unstructured, 2:4, matrix scope); a plain one is left alone", async () => {
    const rand = mulberry32(8);
    const rows = randomRows(rand, 48, 40, "ties");
    const scale = randomScale(rand, 48, "ties");
    const options: MaskOptions[] = [
      { sparsity: 0.01, pattern: { kind: "unstructured" } }, // floor(48 * 0.01) = 0 pruned per column
      { sparsity: 0.5, pattern: { kind: "unstructured" } },
      { sparsity: 0.5, pattern: parsePattern("2:4") },
      { sparsity: 0.5, pattern: { kind: "unstructured" }, scope: "matrix" },
    ];
    for (const layout of ["in_out", "out_in"] as const) {
      const w = weight(rows, OnnxDataType.FLOAT16, layout, "dirty");
      for (const o of options) {
        const s = o.scope === "matrix" ? null : scale;
        const fresh = computeMask(w, s, o);
        for (const pool of pools) {
          const label = `${pool.threads} threads ${layout} ${o.pattern.kind} ${o.sparsity} ${o.scope ?? "column"}`;
          const dirty = new Uint8Array(new SharedArrayBuffer(48 * 40)).fill(1);
          const [r] = await pool.computeMasks([{ weight: w, scale: s, options: o, into: dirty }]);
          assert.equal(r!.mask, dirty, `${label}: written into the given buffer`);
          assert.ok(Buffer.from(r!.mask).equals(Buffer.from(fresh.mask)), label);
          assert.equal(r!.pruned, fresh.pruned, label);
          if (pool.threads === 1) continue;
          const plain = new Uint8Array(48 * 40).fill(1);
          const [p] = await pool.computeMasks([{ weight: w, scale: s, options: o, into: plain }]);
          assert.ok(p!.mask.buffer instanceof SharedArrayBuffer, `${label}: threads write shared memory only`);
          assert.ok(plain.every((b) => b === 1), `${label}: a plain buffer is not written by threads`);
          assert.ok(Buffer.from(p!.mask).equals(Buffer.from(fresh.mask)), label);
        }
      }
    }
  });

  test("MaskBuffers: a given-back mask serves the next job of its size; partial views are not kept", async () => {
    const buffers = new MaskBuffers();
    const mask = new Uint8Array(32);
    buffers.give(mask);
    buffers.give(mask);
    buffers.give(new Uint8Array(new ArrayBuffer(64), 0, 32));
    buffers.give(new Uint8Array(new SharedArrayBuffer(64), 32, 32));
    assert.equal(buffers.take(16), undefined);
    assert.equal(buffers.take(32), mask);
    assert.equal(buffers.take(32), undefined, "each buffer once");
    // A whole shared buffer (a mask from the pool's threads) is kept like a plain one.
    const shared = new Uint8Array(new SharedArrayBuffer(32));
    buffers.give(shared);
    assert.equal(buffers.take(32), shared);
    // Through the selector: the job gets the recycled buffer, and the pool writes its mask there.
    const w = weight(randomRows(mulberry32(3), 8, 4, "continuous"), OnnxDataType.FLOAT, "in_out", "w");
    buffers.give(mask);
    const [r] = await buffers.selector(pools[0]!).computeMasks([{ weight: w, scale: new Float64Array(8).fill(1), options: { sparsity: 0.5, pattern: { kind: "unstructured" } } }]);
    assert.equal(r!.mask, mask);
    assert.equal(r!.pruned, 16);
    // With threads, the masks come back in shared memory, and the next block's are written there.
    const wide = weight(randomRows(mulberry32(4), 8, 64, "continuous"), OnnxDataType.FLOAT, "in_out", "wide");
    const job: MaskJob = { weight: wide, scale: new Float64Array(8).fill(1), options: { sparsity: 0.5, pattern: { kind: "unstructured" } } };
    const [first] = await buffers.selector(pools[1]!).computeMasks([job]);
    assert.ok(first!.mask.buffer instanceof SharedArrayBuffer);
    const bits = Buffer.from(first!.mask);
    buffers.give(first!.mask);
    const [second] = await buffers.selector(pools[1]!).computeMasks([job]);
    assert.equal(second!.mask, first!.mask, "the given-back shared mask is written again");
    assert.ok(Buffer.from(second!.mask).equals(bits));
  });
});
