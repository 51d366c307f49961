/**
 * TAMP's DAS density and score (METHODS.md §3 DAS step 1) and AMIA's greedy token subset (AMIA
 * steps 2-5), worked by hand on a few 2-d output rows.
 */
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { amiaGreedy, amiaSelect } from "../../services/core/src/prune/amiaSelect.js";
import { DasScore, densityOf, densityRho, normalizeRows } from "../../services/core/src/prune/tampDensity.js";
import { CalibrationError } from "../../services/core/src/errors.js";

const s = Math.SQRT1_2;
const close = (got: number, want: number, what: string): void => assert.ok(Math.abs(got - want) < 1e-12, `${what}: ${got} vs ${want}`);

describe("TAMP DAS density", () => {
  // Visual rows (3,0) → (1,0) and (1,1) → (s,s); text rows (0,2) → (0,1), (1,0), (1,1) → (s,s).
  const rows = { data: [3, 0, 1, 1, 0, 2, 1, 0, 1, 1], tokens: 5, dim: 2 };
  const visual = [1, 1, 0, 0, 0];

  test("v, l and vl of one sample", () => {
    const d = densityOf(normalizeRows(rows), 2, visual);
    // v: the one visual pair (1,0)·(s,s) = s > 0.
    close(d.v, s, "v");
    // l: pairs (0,1)·(1,0) = 0 (not strictly positive), (0,1)·(s,s) = s, (1,0)·(s,s) = s → mean s.
    close(d.l, s, "l");
    // vl: all 6 entries: (1,0)·[(0,1),(1,0),(s,s)] = 0, 1, s; (s,s)·[...] = s, s, 1 → (2 + 3s)/6.
    close(d.vl, (2 + 3 * s) / 6, "vl");
    close(densityRho(d), (2 * s + (2 + 3 * s) / 6) / 3, "rho");
  });

  test("a modality with one token gives NaN; the score leaves such samples out", () => {
    const lone = densityOf(normalizeRows({ data: [1, 0, 0, 1, 1, 1], tokens: 3, dim: 2 }), 2, [1, 0, 0]);
    assert.ok(Number.isNaN(lone.v));
    const negative = densityOf(normalizeRows({ data: [1, 0, -1, 0, 0, 1], tokens: 3, dim: 2 }), 2, [1, 1, 0]);
    assert.ok(Number.isNaN(negative.v), "no positive visual pair");
    const das = new DasScore("model.layers.0.mlp.up_proj");
    das.add(densityOf(normalizeRows(rows), 2, visual));
    das.add(lone);
    das.add(negative);
    // Only the first sample counts: (1 − s) + (1 − s) + (1 − (2 + 3s)/6) = 8/3 − 2.5s.
    close(das.score(), 8 / 3 - 2.5 * s, "score");
  });

  test("two valid samples are averaged component by component", () => {
    const das = new DasScore("q");
    das.add({ v: 0.5, l: 0.25, vl: 0.1 });
    das.add({ v: 0.3, l: 0.75, vl: -0.1 });
    close(das.score(), (1 - 0.4) + (1 - 0.5) + (1 - 0), "score");
  });

  test("no sample with both modalities fails naming the linear", () => {
    const das = new DasScore("model.layers.1.self_attn.k_proj");
    das.add({ v: NaN, l: 0.5, vl: 0.2 });
    assert.throws(() => das.score(), (e: unknown) => e instanceof CalibrationError && /k_proj/.test(String((e as Error).message + (e as CalibrationError).subject)) && /both visual and text/.test((e as Error).message));
  });
});

describe("TAMP AMIA selection", () => {
  // Normalised rows o0 = (1,0), o1 = (0.6,0.8), o2 = (0,1): o0·o1 = 0.6, o0·o2 = 0, o1·o2 = 0.8,
  // so dist01 = 0.4, dist02 = 1, dist12 = 0.2. knn (2 neighbours exist): 0 → [1,2], 1 → [2,0], 2 → [1,0].
  const o = new Float64Array([1, 0, 0.6, 0.8, 0, 1]);
  const a = [0.2, 0.5, 0.3];
  const e = Math.exp;
  // g0 = 0.2 + e^-0.4·0.5 + e^-1·0.3 ≈ 0.6455; g1 = 0.5 + e^-0.2·0.3 + e^-0.4·0.2 ≈ 0.8797;
  // g2 = 0.3 + e^-0.2·0.5 + e^-1·0.2 ≈ 0.7829 → t* = 1. g1 pushes its neighbours down:
  // g2 −= e^-0.04·g1 → ≈ −0.0623, g0 −= e^-0.08·g1 → ≈ −0.1665; g1 = min g − 1.
  // K = exp(−‖o_t − o_u‖²/2) = exp(−dist): mean K = (3 + 2(e^-0.4 + e^-1 + e^-0.2))/9 ≈ 0.7460.
  // S = {1}: MMD² = mean K + 1 − 2(e^-0.4 + 1 + e^-0.2)/3 ≈ 0.0866.
  const meanK = (3 + 2 * (e(-0.4) + e(-1) + e(-0.2))) / 9;
  const mmd1 = meanK + 1 - 2 * (e(-0.4) + 1 + e(-0.2)) / 3;

  test("hand-computed MMD² after the first pick", () => {
    assert.ok(Math.abs(mmd1 - 0.0866) < 1e-4, `mmd1 ${mmd1}`);
  });

  test("ρ = 0: threshold 0.1 > MMD² ≈ 0.0866, so the loop stops after token 1", () => {
    const { order, selected } = amiaGreedy(o, 3, 2, a, 0);
    assert.deepEqual(order, [1]);
    assert.deepEqual([...selected], [0, 1, 0]);
  });

  test("ρ = 0.5: threshold ≈ 0.0707; the suppressed neighbour order is 2 (g ≈ −0.062) then 0", () => {
    // Second pick: g2 ≈ −0.0623 > g0 ≈ −0.1665 > g1; max(g2, 0) = 0 pushes nothing.
    // S = {1,2}: MMD² = mean K + (2 + 2e^-0.2)/4 − 2(e^-0.4 + e^-1 + 2 + 2e^-0.2)/6 ≈ 0.0968 ≥ 0.0707.
    const mmd2 = meanK + (2 + 2 * e(-0.2)) / 4 - 2 * (e(-0.4) + e(-1) + 2 + 2 * e(-0.2)) / 6;
    assert.ok(mmd2 > 0.1 * Math.sqrt(0.5));
    const { order, selected } = amiaGreedy(o, 3, 2, a, 0.5);
    assert.deepEqual(order, [1, 2, 0]);
    assert.deepEqual([...selected], [1, 1, 1]);
  });

  test("a NaN ρ (a modality with one token) ends when every token is picked", () => {
    // Unnormalised rows; visual = {0,1}, text = {2}: l is NaN, so ρ is NaN and √(1 − ρ) never stops it.
    const r = amiaSelect({ data: [2, 0, 3, 4, 0, 5], tokens: 3, dim: 2 }, a, [1, 1, 0]);
    assert.ok(Number.isNaN(r.rho));
    assert.deepEqual(r.order, [1, 2, 0]);
  });

  test("ρ from the rows", () => {
    // With visual {0,1} and text {2} duplicated as a fourth token the densities are defined:
    // rows (1,0), (0.6,0.8), (0,1), (0,1); v = 0.6, l = 1, vl = (0 + 0 + 0.8 + 0.8)/4 = 0.4, ρ = 2/3.
    const r = amiaSelect({ data: [1, 0, 0.6, 0.8, 0, 1, 0, 1], tokens: 4, dim: 2 }, [0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0]);
    close(r.rho, 2 / 3, "rho");
  });
});
