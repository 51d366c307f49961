/**
 * Reading and writing the model.onnx protobuf itself (not its external weights).
 *
 * A protobuf parser happily "decodes" many files that are not ONNX at all, so reading checks
 * what every real export has (an IR version, an opset import, a graph) and turns parse failures
 * and such look-alikes into an OnnxFormatError that names the file.
 */
import { readFileSync, statSync } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema, type ModelProto } from "../../../gen/onnx_pb.js";
import { OnnxFormatError } from "../errors.js";

export interface LoadedModel {
  /** Absolute path of the .onnx file. */
  path: string;
  /** Folder external-data locations are relative to. */
  dir: string;
  model: ModelProto;
}

// IR versions so far run 1..11; anything far beyond is a varint that happened to decode from noise.
const MAX_PLAUSIBLE_IR_VERSION = 100n;

export function readModel(path: string): LoadedModel {
  const abs = resolve(path);
  const bytes = readBytes(abs);
  let model: ModelProto;
  try {
    model = fromBinary(ModelProtoSchema, bytes);
  } catch (cause) {
    const why = cause instanceof Error ? cause.message : String(cause);
    throw new OnnxFormatError(
      abs,
      `is not a valid ONNX model (protobuf parse failed: ${why}); the file is truncated or not ONNX — re-export or re-copy it`,
      { cause },
    );
  }
  checkLooksLikeOnnx(abs, model);
  return { path: abs, dir: dirname(abs), model };
}

function readBytes(abs: string): Uint8Array {
  let size: number;
  try {
    const st = statSync(abs);
    if (st.isDirectory()) {
      throw new OnnxFormatError(abs, "is a directory; pass the path of the .onnx file inside it");
    }
    size = st.size;
  } catch (cause) {
    if (cause instanceof OnnxFormatError) throw cause;
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") {
      throw new OnnxFormatError(abs, "model file not found; check the --model path", { cause });
    }
    throw new OnnxFormatError(abs, `cannot read the model file (${(cause as Error).message})`, { cause });
  }
  if (size === 0) {
    throw new OnnxFormatError(abs, "model file is empty; the export or copy did not finish — re-export or re-copy it");
  }
  try {
    const buf = readFileSync(abs);
    // A plain Uint8Array view: protobuf bytes fields are then plain views too, not Buffers
    // whose slice() shares memory.
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } catch (cause) {
    throw new OnnxFormatError(abs, `cannot read the model file (${(cause as Error).message})`, { cause });
  }
}

function checkLooksLikeOnnx(abs: string, model: ModelProto): void {
  const problems: string[] = [];
  if (model.irVersion <= 0n || model.irVersion > MAX_PLAUSIBLE_IR_VERSION) {
    problems.push(`ir_version ${model.irVersion} is missing or implausible`);
  }
  if (model.opsetImport.length === 0) {
    problems.push("it has no opset_import");
  } else if (model.opsetImport.some((o) => o.version <= 0n)) {
    problems.push("an opset_import has no version");
  }
  if (!model.graph) {
    problems.push("it has no graph");
  } else if (model.graph.node.length === 0 && model.graph.output.length === 0) {
    problems.push("its graph has neither nodes nor outputs");
  }
  if (problems.length > 0) {
    throw new OnnxFormatError(
      abs,
      `is not an ONNX model (${problems.join("; ")}); the file is truncated or not ONNX — re-export or re-copy it`,
    );
  }
}

/**
 * Serializes `model` to `path` through `path.partial` + rename, so a reader never sees a
 * half-written model.onnx under the final name.
 */
export async function writeModel(path: string, model: ModelProto): Promise<void> {
  const abs = resolve(path);
  const partial = `${abs}.partial`;
  const bytes = toBinary(ModelProtoSchema, model);
  const handle = await open(partial, "w");
  try {
    await handle.writeFile(bytes);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
  await handle.close();
  await rename(partial, abs);
}
