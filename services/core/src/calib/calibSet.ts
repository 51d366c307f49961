/**
 * The calibration set: a JSONL file, one sample per line, either token ids (decoders that embed
 * themselves) or `inputs_embeds` arrays in .npy files (LVLM decoders fed by a vision projector),
 * with an image-token mask and an optional attention mask.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { CalibrationError, InvalidArgumentError } from "../errors.js";
import { readNpy, readNpyHeader, readNpyInt64, type NpyDtype } from "./npy.js";
import { mulberry32 } from "./seededRandom.js";
import { closestName } from "../text/closestName.js";

export { mulberry32 };

export interface CalibSample {
  /** position in the selected set (0-based) */
  index: number;
  /** 1-based line of the JSONL file, for error messages */
  line: number;
  tokens: number;
  inputIds?: BigInt64Array;
  /** [tokens, hidden] row-major, as stored (float32 values or float16 bits) */
  embeds?: { dtype: NpyDtype; hidden: number; data: Float32Array | Uint16Array; file: string };
  /** 1 = attended, 0 = padding */
  attentionMask: Uint8Array;
  /** 1 = image token */
  imageMask: Uint8Array;
  /**
   * Position ids from the set (`position_ids`: an int64 .npy): `rows` = 3 for multimodal RoPE
   * (temporal, height, width; data [3, tokens] row-major), 1 for plain positions. Absent: the
   * engine derives 1-D positions from the attention mask.
   */
  positionIds?: { rows: 1 | 3; data: BigInt64Array; file: string };
}

export interface CalibSelection {
  /** take this many samples after a seeded shuffle; all, in file order, when absent */
  nsamples?: number;
  seed: number;
  /**
   * Read only the .npy headers (shape, type, size): enough to validate the set and count its
   * tokens where the embeddings themselves are not needed (the cluster coordinator).
   * `embeds.data` is then empty.
   */
  headersOnly?: boolean;
}

interface RawLine { line: number; value: Record<string, unknown> }

/** Every key a calibration line may have; any other is a typo that would silently change the sample. */
export const CALIB_KEYS = ["input_ids", "inputs_embeds", "attention_mask", "image_mask", "position_ids"] as const;

/** Refuses a key not in CALIB_KEYS, naming the closest known one. */
export function checkCalibKeys(value: Record<string, unknown>, where: string): void {
  for (const key of Object.keys(value)) {
    if ((CALIB_KEYS as readonly string[]).includes(key)) continue;
    const near = closestName(key, CALIB_KEYS);
    throw new CalibrationError(where, `unknown key ${JSON.stringify(key)}${near ? ` (did you mean ${JSON.stringify(near)}?)` : ""}; a line may have ${CALIB_KEYS.join(", ")}`);
  }
}

export function loadCalibrationSet(path: string, selection: CalibSelection): CalibSample[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new CalibrationError(path, `cannot read the calibration file (${(err as Error).message})`, { cause: err });
  }
  const lines: RawLine[] = [];
  text.split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch (err) {
      throw new CalibrationError(`${path}:${i + 1}`, `not valid JSON (${(err as Error).message})`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new CalibrationError(`${path}:${i + 1}`, "each line must be a JSON object");
    }
    checkCalibKeys(value as Record<string, unknown>, `${path}:${i + 1}`);
    lines.push({ line: i + 1, value: value as Record<string, unknown> });
  });
  if (lines.length === 0) throw new CalibrationError(path, "the calibration file has no samples");
  const chosen = select(lines, selection, path);
  return chosen.map((raw, index) => parseSample(raw, index, path, selection.headersOnly ?? false));
}

function select(lines: RawLine[], { nsamples, seed }: CalibSelection, path: string): RawLine[] {
  if (nsamples === undefined) return lines;
  if (!Number.isInteger(nsamples) || nsamples < 1) throw new InvalidArgumentError("nsamples", `must be a positive integer, got ${nsamples}`);
  if (nsamples > lines.length) throw new CalibrationError(path, `--nsamples ${nsamples} asks for more samples than the file has (${lines.length})`);
  return seededOrder(lines.length, seed).slice(0, nsamples).map((i) => lines[i]!);
}

/** 0..n-1 after a Fisher-Yates shuffle driven by mulberry32(seed): --nsamples takes a prefix. */
export function seededOrder(n: number, seed: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  const random = mulberry32(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}


function parseSample({ line, value }: RawLine, index: number, path: string, headersOnly: boolean): CalibSample {
  const where = `${path}:${line}`;
  const ids = value["input_ids"];
  const embedsRef = value["inputs_embeds"];
  let tokens: number;
  let inputIds: BigInt64Array | undefined;
  let embeds: CalibSample["embeds"];
  // Both may be given (atvp calib writes both): the embeddings feed LVLM decoders, the ids let
  // eval compute perplexity.
  if (ids !== undefined) {
    if (!Array.isArray(ids) || ids.length === 0 || !ids.every((x) => Number.isInteger(x) && x >= 0)) {
      throw new CalibrationError(where, "input_ids must be a non-empty array of non-negative integers");
    }
    inputIds = BigInt64Array.from(ids as number[], (x) => BigInt(x));
  }
  if (embedsRef !== undefined) {
    if (typeof embedsRef !== "string" || embedsRef === "") throw new CalibrationError(where, "inputs_embeds must be the path of a .npy file");
    const file = isAbsolute(embedsRef) ? embedsRef : resolve(dirname(path), embedsRef);
    let array;
    try {
      array = headersOnly ? headerArray(readNpyHeader(file)) : readNpy(file);
    } catch (err) {
      throw new CalibrationError(where, (err as Error).message, { cause: err });
    }
    const shape = array.shape.length === 3 && array.shape[0] === 1 ? array.shape.slice(1) : array.shape;
    if (shape.length !== 2 || shape[0] === 0) {
      throw new CalibrationError(where, `${embedsRef} has shape (${array.shape.join(", ")}); expected [T, hidden] or [1, T, hidden]`);
    }
    tokens = shape[0]!;
    embeds = { dtype: array.dtype, hidden: shape[1]!, data: array.data, file };
    if (inputIds && inputIds.length !== tokens) throw new CalibrationError(where, `input_ids has ${inputIds.length} tokens; ${embedsRef} has ${tokens}`);
  } else if (inputIds) {
    tokens = inputIds.length;
  } else {
    throw new CalibrationError(where, "a sample needs input_ids or inputs_embeds");
  }
  const attentionMask = binaryMask(value["attention_mask"], tokens, 1, "attention_mask", where);
  const imageMask = binaryMask(value["image_mask"], tokens, 0, "image_mask", where);
  const positionIds = readPositionIds(value["position_ids"], tokens, path, where);
  return { index, line, tokens, inputIds, embeds, attentionMask, imageMask, positionIds };
}

/** `[3, T]` or `[T]` (a leading batch dimension of 1 is accepted: `[3, 1, T]`, `[1, T]`). */
function readPositionIds(raw: unknown, tokens: number, path: string, where: string): CalibSample["positionIds"] {
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw !== "string" || raw === "") throw new CalibrationError(where, "position_ids must be the path of an int64 .npy file");
  const file = isAbsolute(raw) ? raw : resolve(dirname(path), raw);
  let array;
  try {
    array = readNpyInt64(file);
  } catch (err) {
    throw new CalibrationError(where, (err as Error).message, { cause: err });
  }
  const shape = array.shape;
  let rows: 1 | 3 | undefined;
  if (shape.length === 1 && shape[0] === tokens) rows = 1;
  else if (shape.length === 2 && shape[0] === 1 && shape[1] === tokens) rows = 1;
  else if (shape.length === 2 && shape[0] === 3 && shape[1] === tokens) rows = 3;
  else if (shape.length === 3 && shape[0] === 3 && shape[1] === 1 && shape[2] === tokens) rows = 3;
  if (rows === undefined) {
    throw new CalibrationError(where, `${raw} has shape (${shape.join(", ")}); position ids must be [3, ${tokens}] (multimodal RoPE) or [${tokens}], one per token`);
  }
  return { rows, data: array.data, file };
}

function binaryMask(raw: unknown, tokens: number, fill: 0 | 1, field: string, where: string): Uint8Array {
  if (raw === undefined || raw === null) return new Uint8Array(tokens).fill(fill);
  if (!Array.isArray(raw) || raw.length !== tokens) {
    throw new CalibrationError(where, `${field} must be an array of ${tokens} values (one per token), got ${Array.isArray(raw) ? raw.length : typeof raw}`);
  }
  const out = new Uint8Array(tokens);
  raw.forEach((v, i) => {
    if (v === 1 || v === true) out[i] = 1;
    else if (v !== 0 && v !== false) throw new CalibrationError(where, `${field}[${i}] must be 0 or 1, got ${JSON.stringify(v)}`);
  });
  return out;
}

/** Text tokens: attended and not image. Visual tokens: attended image tokens. */
export function tokenCounts(sample: CalibSample): { nText: number; nVisual: number } {
  let nText = 0;
  let nVisual = 0;
  for (let t = 0; t < sample.tokens; t++) {
    if (!sample.attentionMask[t]) continue;
    if (sample.imageMask[t]) nVisual++;
    else nText++;
  }
  return { nText, nVisual };
}

function headerArray(h: { dtype: NpyDtype; shape: number[] }): { dtype: NpyDtype; shape: number[]; data: Float32Array | Uint16Array } {
  return { dtype: h.dtype, shape: h.shape, data: h.dtype === "float32" ? new Float32Array(0) : new Uint16Array(0) };
}
