/**
 * A synthetic calibration set shaped like LLaVA prompts: text-token embeddings with one
 * contiguous run of image-token embeddings whose statistics differ clearly from text (a
 * low-rank structure, a mean offset and a few high-magnitude channels), so per-layer activation
 * differences between visual and text tokens exist to be measured.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeNpy } from "../calib/npy.js";
import { CalibrationError } from "../errors.js";
import { floatToHalf } from "../onnx/dtype.js";
import type { CalibConfig } from "./config.js";
import { Rng } from "./rng.js";

export const CALIB_FILE = "calib.jsonl";
export const CALIB_DIR = "calib";

/** Distinct text "tokens"; row 0 doubles as the padding token. */
const TEXT_TABLE_ROWS = 512;
const IMAGE_RANK = 8;
const HOT_CHANNEL_SCALE = 4;
const HOT_CHANNEL_MEAN = 2;

export interface CalibSampleInfo {
  /** npy path relative to the JSONL file. */
  file: string;
  imageStart: number;
  imageTokens: number;
  /** Tokens before the trailing padding. */
  validTokens: number;
}

export interface WrittenCalib {
  calibPath: string;
  samples: CalibSampleInfo[];
}

/** Line of calib.jsonl. */
export interface CalibLine {
  inputs_embeds: string;
  image_mask: number[];
  attention_mask?: number[];
}

export function writeCalibration(cfg: CalibConfig, hidden: number, fp16: boolean, seed: number, outDir: string): WrittenCalib {
  const calibPath = join(outDir, CALIB_FILE);
  try {
    mkdirSync(join(outDir, CALIB_DIR), { recursive: true });
  } catch (err) {
    throw new CalibrationError(join(outDir, CALIB_DIR), `cannot create directory (${(err as Error).message})`, { cause: err });
  }
  const text = textTable(hidden, seed);
  const image = imageModel(hidden, seed);
  const rng = Rng.forKey(seed, "calib.samples");
  const lines: string[] = [];
  const samples: CalibSampleInfo[] = [];
  const { seqLen, imageTokens } = cfg;

  for (let s = 0; s < cfg.samples; s++) {
    const pad = s === cfg.samples - 1 ? cfg.padTokens : 0;
    const validTokens = seqLen - pad;
    // Text on both sides of the image run, at an offset that varies per sample.
    const imageStart = imageTokens > 0 ? rng.int(1, validTokens - imageTokens - 1) : 0;
    const data = new Float32Array(seqLen * hidden);
    const imageMask = new Array<number>(seqLen).fill(0);
    for (let t = 0; t < seqLen; t++) {
      const row = data.subarray(t * hidden, (t + 1) * hidden);
      if (t >= validTokens) {
        row.set(text.subarray(0, hidden));
      } else if (imageTokens > 0 && t >= imageStart && t < imageStart + imageTokens) {
        imageMask[t] = 1;
        image.sample(rng, row);
      } else {
        const id = rng.int(1, TEXT_TABLE_ROWS - 1);
        row.set(text.subarray(id * hidden, (id + 1) * hidden));
      }
    }
    const file = `${CALIB_DIR}/s${s}.npy`;
    const shape = [seqLen, hidden];
    try {
      if (fp16) writeNpy(join(outDir, file), { dtype: "float16", shape, data: Uint16Array.from(data, (v) => floatToHalf(v)) });
      else writeNpy(join(outDir, file), { dtype: "float32", shape, data });
    } catch (err) {
      throw new CalibrationError(join(outDir, file), `cannot write sample (${(err as Error).message})`, { cause: err });
    }
    const line: CalibLine = { inputs_embeds: file, image_mask: imageMask };
    if (pad > 0) line.attention_mask = Array.from({ length: seqLen }, (_, t) => (t < validTokens ? 1 : 0));
    lines.push(JSON.stringify(line));
    samples.push({ file, imageStart, imageTokens, validTokens });
  }
  try {
    writeFileSync(calibPath, lines.join("\n") + "\n");
  } catch (err) {
    throw new CalibrationError(calibPath, `cannot write calibration list (${(err as Error).message})`, { cause: err });
  }
  return { calibPath, samples };
}

/** Text embeddings ~ N(0, 1) per channel, like a trained embedding table's rows. */
function textTable(hidden: number, seed: number): Float32Array {
  const rng = Rng.forKey(seed, "calib.text_table");
  const table = new Float32Array(TEXT_TABLE_ROWS * hidden);
  for (let i = 0; i < table.length; i++) table[i] = rng.normal();
  return table;
}

/**
 * Image tokens = (mean + low-rank mixture + small noise) scaled per channel, with an eighth of
 * the channels both offset and amplified: the projector outputs of real LVLMs look like this
 * (few directions, large norms on some channels), and it makes their norm ~3x a text token's.
 */
function imageModel(hidden: number, seed: number): { sample(rng: Rng, out: Float32Array): void } {
  const rng = Rng.forKey(seed, "calib.image_model");
  const rank = Math.min(IMAGE_RANK, hidden);
  const basis = new Float32Array(rank * hidden);
  for (let i = 0; i < basis.length; i++) basis[i] = rng.normal() / Math.sqrt(rank) * 1.5;
  const scale = new Float32Array(hidden).fill(1);
  const mean = new Float32Array(hidden);
  for (let c = 0; c < hidden; c++) {
    const hot = rng.next() < 0.125;
    scale[c] = hot ? HOT_CHANNEL_SCALE : 1;
    mean[c] = 0.5 * rng.normal() + (hot ? HOT_CHANNEL_MEAN : 0);
  }
  const coef = new Float64Array(rank);
  return {
    sample(r: Rng, out: Float32Array): void {
      for (let k = 0; k < rank; k++) coef[k] = r.normal();
      for (let c = 0; c < hidden; c++) {
        let v = mean[c]! + 0.3 * r.normal();
        for (let k = 0; k < rank; k++) v += coef[k]! * basis[k * hidden + c]!;
        out[c] = v * scale[c]!;
      }
    },
  };
}
