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
import { openModelFolder, refuseQuantized, type ModelFolder } from "./modelFolder.js";

export interface FolderPruneOptions extends PruneOptions {
  layout?: string;
  dtype?: string;
}

export async function pruneModelFolder(input: PruneSpec, options: FolderPruneOptions = {}): Promise<PruneReport> {
  const { src, folder, decoderPath } = openFolderJob(input.model, { layout: options.layout, dtype: options.dtype });
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
    await assembleFolder({ src, folder }, decoderStage, staging);
    const folderReport: PruneReport = { ...report, spec: { ...report.spec, model: input.model, decoder: folder.decoder, layout: folder.layout } };
    await writeFile(join(staging, REPORT_FILE), JSON.stringify(folderReport, null, 2) + "\n");
    await commit(staging, out, existing);
    return folderReport;
  } finally {
    await rm(staging, { recursive: true, force: true });
    await rm(decoderStage, { recursive: true, force: true });
  }
}

/** Where a cluster job on a model folder has its decoder pruned, inside the output folder. */
export const DECODER_STAGE = ".atvp-decoder";

/** A model folder and the decoder in it that a job prunes. */
export interface FolderJob {
  /** the folder, resolved */
  src: string;
  folder: ModelFolder;
}

/** The folder's decoder, refused when quantized; `src` must be a model folder. */
export function openFolderJob(src: string, options: { layout?: string; dtype?: string } = {}): FolderJob & { decoderPath: string } {
  const dir = resolve(src);
  const folder = openModelFolder(dir, options);
  const decoderPath = join(dir, folder.decoder);
  refuseQuantized(decoderPath);
  return { src: dir, folder, decoderPath };
}

/**
 * Writes the pruned folder into `dst`: every file of the source folder but the decoder and its
 * external data copied byte for byte (symbolic links are not followed: they are left out), then
 * the pruned decoder from `decoderStage` (an atvp prune output: model.onnx, model.onnx.data)
 * under the decoder's own file names, its data file renamed to match.
 */
export async function assembleFolder({ src, folder }: FolderJob, decoderStage: string, dst: string): Promise<void> {
  const decoderPath = join(src, folder.decoder);
  const sourceData = externalDataFiles(decoderPath);
  const skip = new Set([folder.decoder, ...sourceData.map((f) => posix.join(posix.dirname(folder.decoder), f))]);
  await copyTree(src, dst, skip);
  const decoderName = basename(folder.decoder);
  const dataName = sourceData.length === 1 ? sourceData[0]! : folder.layout === "genai" ? `${decoderName}.data` : `${decoderName}_data`;
  const decoderDir = join(dst, dirname(folder.decoder));
  await mkdir(decoderDir, { recursive: true });
  const pruned = readModel(join(decoderStage, MODEL_FILE)).model;
  for (const t of pruned.graph?.initializer ?? []) {
    for (const e of t.externalData) if (e.key === "location" && e.value === DATA_FILE) e.value = dataName;
  }
  await rename(join(decoderStage, DATA_FILE), join(decoderDir, dataName));
  await writeFile(join(decoderDir, decoderName), toBinary(ModelProtoSchema, pruned));
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
