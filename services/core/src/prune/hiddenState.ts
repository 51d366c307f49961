/**
 * The hidden state at a block boundary, read from the boundary tensors: one tensor, or a
 * (residual, delta) pair when the export fused the residual add into the next layer's norm.
 * ATV compares a block's input and output hidden states token by token.
 */
import { halfToFloatTable } from "../onnx/dtype.js";
import { NumericError } from "../errors.js";
import type { WireTensor } from "../runtime/wireTensor.js";

/** Row t of the hidden state (sum of the parts), as float64. */
function hiddenReader(parts: readonly WireTensor[], hidden: number): (t: number, out: Float64Array) => void {
  const table = halfToFloatTable();
  return (t, out) => {
    out.fill(0);
    const base = t * hidden;
    for (const p of parts) {
      const data = p.data;
      if (p.type === "float16") {
        for (let c = 0; c < hidden; c++) out[c]! += table[(data as Uint16Array)[base + c]!]!;
      } else {
        for (let c = 0; c < hidden; c++) out[c]! += (data as Float32Array)[base + c]!;
      }
    }
  };
}

export function hiddenSize(parts: readonly WireTensor[], subject: string): number {
  const dims = parts[0]?.dims;
  if (!dims || dims.length === 0) throw new NumericError(subject, "block boundary has no tensor");
  for (const p of parts) {
    if (p.dims.join(",") !== dims.join(",")) throw new NumericError(subject, `boundary tensors differ in shape ([${p.dims}] vs [${dims}])`);
  }
  return dims[dims.length - 1]!;
}

/**
 * d_t = 1 - cos(X[t], Y[t]) for the tokens flagged in `which` (others left 0). A zero vector
 * has cosine 0, as torch's cosine_similarity gives with its epsilon.
 */
export function cosineDistances(
  x: readonly WireTensor[], y: readonly WireTensor[], tokens: number, which: Uint8Array, subject: string,
): Float64Array {
  const hidden = hiddenSize(x, subject);
  if (hiddenSize(y, subject) !== hidden) throw new NumericError(subject, "block input and output hidden sizes differ");
  const readX = hiddenReader(x, hidden);
  const readY = hiddenReader(y, hidden);
  const rx = new Float64Array(hidden);
  const ry = new Float64Array(hidden);
  const d = new Float64Array(tokens);
  for (let t = 0; t < tokens; t++) {
    if (!which[t]) continue;
    readX(t, rx);
    readY(t, ry);
    let dot = 0, nx = 0, ny = 0;
    for (let c = 0; c < hidden; c++) {
      dot += rx[c]! * ry[c]!;
      nx += rx[c]! * rx[c]!;
      ny += ry[c]! * ry[c]!;
    }
    const denom = Math.sqrt(nx) * Math.sqrt(ny);
    const cos = denom === 0 ? 0 : dot / denom;
    d[t] = 1 - cos;
    if (!Number.isFinite(d[t]!)) throw new NumericError(`${subject}, token ${t}`, "NaN or Inf in the hidden states");
  }
  return d;
}

/**
 * The distances the block's graph measured for every token (--stats graph), kept for the tokens
 * flagged in `which` (others 0), with the same checks as cosineDistances.
 */
export function checkedDistances(measured: Float64Array, tokens: number, which: Uint8Array, subject: string): Float64Array {
  if (measured.length !== tokens) throw new NumericError(subject, `the graph measured ${measured.length} token distances, the sample has ${tokens} tokens`);
  const d = new Float64Array(tokens);
  for (let t = 0; t < tokens; t++) {
    if (!which[t]) continue;
    d[t] = measured[t]!;
    if (!Number.isFinite(d[t]!)) throw new NumericError(`${subject}, token ${t}`, "NaN or Inf in the hidden states");
  }
  return d;
}
