/**
 * `atvp prune --model DIR`: prunes the decoder of a model folder and writes a complete folder
 * beside it: every other file copied byte for byte, the pruned decoder (and its external data)
 * under the original file names, report.json at the top. The folder is assembled under a
 * temporary name and renamed into place, so --out appears complete or not at all.
 */
import { copyFile, mkdir, readdir, rename, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, posix, relative, resolve, sep } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { ModelProtoSchema } from "../../../gen/onnx_pb.js";
import { InvalidArgumentError, OutputExistsError } from "../errors.js";
import { readModel } from "../onnx/modelFile.js";
import { DATA_FILE, MODEL_FILE, REPORT_FILE } from "../onnx/outputDir.js";
import { pruneModel, type PruneOptions } from "../pipeline/pruneModel.js";
import type { PruneSpec } from "../pipeline/pruneSpec.js";
import type { PruneReport } from "../pipeline/report.js";
import { openModelFolder, refuseQuantized } from "./modelFolder.js";

export interface FolderPruneOptions extends PruneOptions {
  layout?: string;
  dtype?: string;
}

export async function pruneModelFolder(input: PruneSpec, options: FolderPruneOptions = {}): Promise<PruneReport> {
  const src = resolve(input.model);
  const folder = openModelFolder(src, { layout: options.layout, dtype: options.dtype });
  const decoderPath = join(src, folder.decoder);
  refuseQuantized(decoderPath);
  const out = resolve(input.out);
  if (out === src || out.startsWith(src + sep) || src.startsWith(out + sep)) {
    throw new InvalidArgumentError("--out", `${out} overlaps the model folder ${src}; choose a folder outside it`);
  }
  const existing = await entries(out);
  if (existing !== undefined && existing.length > 0 && !input.force) {
    throw new OutputExistsError(out, `output folder is not empty (${existing.slice(0, 3).join(", ")}); use --force to overwrite or choose another --out folder`);
  }
  const staging = join(dirname(out), `.${basename(out)}.partial-${process.pid}`);
  const decoderStage = `${staging}-decoder`;
  await rm(staging, { recursive: true, force: true });
  await rm(decoderStage, { recursive: true, force: true });
  try {
    const report = await pruneModel({ ...input, model: decoderPath, out: decoderStage, force: false }, options);
    const sourceData = externalDataFiles(decoderPath);
    const skip = new Set([folder.decoder, ...sourceData.map((f) => posix.join(posix.dirname(folder.decoder), f))]);
    await copyTree(src, staging, skip);
    const decoderName = basename(folder.decoder);
    const dataName = sourceData.length === 1 ? sourceData[0]! : folder.layout === "genai" ? `${decoderName}.data` : `${decoderName}_data`;
    const decoderDir = join(staging, dirname(folder.decoder));
    await mkdir(decoderDir, { recursive: true });
    const pruned = readModel(join(decoderStage, MODEL_FILE)).model;
    for (const t of pruned.graph?.initializer ?? []) {
      for (const e of t.externalData) if (e.key === "location" && e.value === DATA_FILE) e.value = dataName;
    }
    await writeFile(join(decoderDir, decoderName), toBinary(ModelProtoSchema, pruned));
    await rename(join(decoderStage, DATA_FILE), join(decoderDir, dataName));
    const folderReport: PruneReport = { ...report, spec: { ...report.spec, model: input.model, decoder: folder.decoder, layout: folder.layout } };
    await writeFile(join(staging, REPORT_FILE), JSON.stringify(folderReport, null, 2) + "\n");
    await commit(staging, out, existing);
    return folderReport;
  } finally {
    await rm(staging, { recursive: true, force: true });
    await rm(decoderStage, { recursive: true, force: true });
  }
}

async function entries(dir: string): Promise<string[] | undefined> {
  try {
    const st = await stat(dir);
    if (!st.isDirectory()) throw new OutputExistsError(dir, "exists and is not a directory; choose another --out folder");
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/** External-data files of a model, as written in its tensors (relative to the model). */
function externalDataFiles(modelPath: string): string[] {
  const { model } = readModel(modelPath);
  const files = new Set<string>();
  for (const t of model.graph?.initializer ?? []) for (const e of t.externalData) if (e.key === "location") files.add(e.value.split(sep).join("/"));
  return [...files];
}

async function copyTree(src: string, dst: string, skip: ReadonlySet<string>): Promise<void> {
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const abs = join(dir, entry.name);
      const rel = relative(src, abs).split(sep).join("/");
      if (entry.isDirectory()) await walk(abs);
      else if (entry.isFile() && !skip.has(rel)) {
        await mkdir(dirname(join(dst, rel)), { recursive: true });
        await copyFile(abs, join(dst, rel));
      }
    }
  };
  await mkdir(dst, { recursive: true });
  await walk(src);
}

/** Moves the finished folder into place: a rename when --out is new or empty, file by file under --force. */
async function commit(staging: string, out: string, existing: string[] | undefined): Promise<void> {
  if (existing === undefined || existing.length === 0) {
    if (existing !== undefined) await rmdir(out);
    await rename(staging, out);
    return;
  }
  const move = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const abs = join(dir, entry.name);
      const target = join(out, relative(staging, abs));
      if (entry.isDirectory()) await move(abs);
      else {
        await mkdir(dirname(target), { recursive: true });
        await rename(abs, target);
      }
    }
  };
  await move(staging);
}
