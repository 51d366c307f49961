/**
 * The output folder of a pruning job and the names of what we write there.
 *
 * A job refuses to write into a folder that already holds something unless --force is given,
 * and --force removes only our own files: pointing --out at the wrong folder must never cost
 * the user anything else.
 */
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { OutputExistsError } from "../errors.js";

export const MODEL_FILE = "model.onnx";
export const DATA_FILE = "model.onnx.data";
export const REPORT_FILE = "report.json";
/** Suffix of a file still being written; renamed to its final name once complete. */
export const PARTIAL_SUFFIX = ".partial";

const OUR_FILES = [MODEL_FILE, DATA_FILE, REPORT_FILE].flatMap((f) => [f, f + PARTIAL_SUFFIX]);

export async function prepareOutputDir(dir: string, force: boolean): Promise<void> {
  const abs = resolve(dir);
  let entries: string[];
  try {
    const st = await stat(abs);
    if (!st.isDirectory()) {
      throw new OutputExistsError(abs, "exists and is not a directory; choose another --out folder");
    }
    entries = await readdir(abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    await mkdir(abs, { recursive: true });
    return;
  }
  if (entries.length === 0) return;
  if (!force) {
    throw new OutputExistsError(
      abs,
      `output folder is not empty (${entries.length} entries, e.g. ${entries.slice(0, 3).join(", ")}); use --force to overwrite or choose another --out folder`,
    );
  }
  await Promise.all(OUR_FILES.map((f) => rm(join(abs, f), { force: true })));
}
