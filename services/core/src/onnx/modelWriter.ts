/**
 * Writes a pruned model: OUT/model.onnx (same graph as the source) + OUT/model.onnx.data.
 *
 * The data file's layout is planned up front, one 4096-aligned region per external tensor (the
 * page size, so onnxruntime can map weights in place), which lets the pruned weights arrive in
 * any order, from this process or from workers writing their regions directly, without ever
 * holding the model in memory. Untouched weights are streamed from the source in chunks.
 * model.onnx is written last, after the data is complete and synced, so a crash never leaves a
 * model.onnx that looks complete.
 */
import { open, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { join, resolve } from "node:path";
import { clearField, clone, create } from "@bufbuild/protobuf";
import {
  ModelProtoSchema,
  StringStringEntryProtoSchema,
  TensorProtoSchema,
  TensorProto_DataLocation,
  type ModelProto,
  type TensorProto,
} from "../../../gen/onnx_pb.js";
import { syncDir } from "../io/syncDir.js";
import { InvalidArgumentError, OutputExistsError } from "../errors.js";
import { writeModel, type LoadedModel } from "./modelFile.js";
import { DATA_FILE, MODEL_FILE, PARTIAL_SUFFIX } from "./outputDir.js";
import { allTensors, isExternal, tensorSubject, type TensorData } from "./tensorData.js";

export interface Region {
  offset: number;
  length: number;
}

/** Alignment of every region of the output data file. */
export const DATA_ALIGNMENT = 4096;
const COPY_CHUNK = 8 << 20;

export interface Planned {
  src: TensorProto;
  /** The same tensor in the output model (a clone of the source). */
  out: TensorProto;
  region: Region;
  /** Bytes come from writeTensor (true) or are copied from the source (false). */
  rewritten: boolean;
}

type State = "open" | "finalizing" | "done" | "aborted";

export class PrunedModelWriter {
  readonly outDir: string;
  readonly modelPath: string;
  readonly dataPath: string;
  /** Where region writes go until finalize renames it to `dataPath`. */
  readonly partialDataPath: string;
  /** Size of the finished data file. */
  readonly totalBytes: number;

  private state: State = "open";
  private dataRenamed = false;
  private readonly written = new Set<string>();
  private readonly inflight = new Set<Promise<void>>();

  private constructor(
    outDir: string,
    private readonly data: TensorData,
    private readonly outModel: ModelProto,
    private readonly planned: readonly Planned[],
    private readonly byName: ReadonlyMap<string, Planned>,
    private readonly rewrittenNames: readonly string[],
    private handle: FileHandle | undefined,
  ) {
    this.outDir = outDir;
    this.modelPath = join(outDir, MODEL_FILE);
    this.dataPath = join(outDir, DATA_FILE);
    this.partialDataPath = this.dataPath + PARTIAL_SUFFIX;
    const last = planned[planned.length - 1];
    this.totalBytes = last ? last.region.offset + last.region.length : 0;
  }

  /**
   * Plans the output and opens OUT/model.onnx.data.partial. `rewritten` names the main-graph
   * initializers whose new bytes writeTensor will supply. Checks the source's external data
   * first, so a bad input fails before anything is written.
   */
  static async create(
    src: LoadedModel,
    data: TensorData,
    outDir: string,
    rewritten: ReadonlySet<string>,
    options: { resume?: boolean } = {},
  ): Promise<PrunedModelWriter> {
    const dir = resolve(outDir);
    const graph = src.model.graph;
    if (!graph) throw new InvalidArgumentError(src.path, "model has no graph to write");

    const counts = new Map<string, number>();
    for (const t of graph.initializer) counts.set(t.name, (counts.get(t.name) ?? 0) + 1);
    for (const name of rewritten) {
      const n = counts.get(name) ?? 0;
      if (n !== 1) {
        throw new InvalidArgumentError(
          `tensor "${name}"`,
          n === 0
            ? `is not an initializer of ${src.path}; only graph initializers can be rewritten`
            : `names ${n} initializers of ${src.path}; the model is invalid — re-export it`,
        );
      }
    }

    await data.validate();

    const { outModel, planned, byName, end } = planLayout(src, data, dir, rewritten);

    if (options.resume) {
      // A restarted coordinator reopens the data its workers already wrote.
      const handle = await open(join(dir, DATA_FILE) + PARTIAL_SUFFIX, "r+");
      return new PrunedModelWriter(dir, data, outModel, planned, byName, [...rewritten], handle);
    }
    for (const f of [MODEL_FILE, DATA_FILE]) {
      if (await exists(join(dir, f))) {
        throw new OutputExistsError(
          join(dir, f),
          "already exists; prepare the output folder first (use --force to overwrite)",
        );
      }
    }
    const handle = await open(join(dir, DATA_FILE) + PARTIAL_SUFFIX, "w");
    try {
      // Sized up front so regions can be written in any order; alignment gaps stay sparse.
      await handle.truncate(end);
    } catch (err) {
      await handle.close().catch(() => undefined);
      throw err;
    }
    return new PrunedModelWriter(dir, data, outModel, planned, byName, [...rewritten], handle);
  }

  /** The region of a main-graph initializer in the output data file (undefined if it stays inline). */
  plannedRegion(name: string): Region | undefined {
    const p = this.byName.get(name);
    return p ? { ...p.region } : undefined;
  }

  /** Writes the new bytes of a rewritten tensor into its region; any order, concurrently. */
  async writeTensor(name: string, bytes: Uint8Array): Promise<void> {
    const p = this.rewrittenPlan(name);
    if (bytes.length !== p.region.length) {
      throw new InvalidArgumentError(
        tensorSubject(p.src),
        `got ${bytes.length} bytes but its shape [${p.src.dims.join(", ")}] needs ${p.region.length}; write the whole tensor in its original type`,
      );
    }
    const handle = this.handle!;
    const write = writeAll(handle, bytes, p.region.offset).then(() => {
      this.written.add(name);
    });
    this.inflight.add(write);
    try {
      await write;
    } finally {
      this.inflight.delete(write);
    }
  }

  /** Records that another process wrote this tensor's region of `partialDataPath` directly. */
  markWritten(name: string): void {
    this.rewrittenPlan(name);
    this.written.add(name);
  }

  /**
   * Copies the untouched external weights, syncs, renames the data file into place, then writes
   * model.onnx. If a rewritten tensor is missing it throws and the writer stays open (write it
   * and finalize again, or abort).
   */
  async finalize(): Promise<void> {
    this.assertOpen(this.dataPath);
    await Promise.allSettled([...this.inflight]);
    const missing = this.rewrittenNames.filter((n) => !this.written.has(n));
    if (missing.length > 0) {
      const shown = missing.slice(0, 5).map((n) => `"${n}"`).join(", ");
      const more = missing.length > 5 ? ` and ${missing.length - 5} more` : "";
      throw new InvalidArgumentError(
        this.dataPath,
        `${missing.length} pruned tensor(s) were never written: ${shown}${more}; write them before finalize, or abort`,
      );
    }
    this.state = "finalizing";
    const handle = this.handle!;
    await this.copyUntouched(handle);
    for (const p of this.planned) pointAtOutputData(p.out, p.region);
    await handle.sync();
    await handle.close();
    this.handle = undefined;
    await rename(this.partialDataPath, this.dataPath);
    this.dataRenamed = true;
    await writeModel(this.modelPath, this.outModel);
    await syncDir(this.outDir);
    this.state = "done";
  }

  /** Closes the partial data file and keeps it (for a writer opened with resume: the job's owner decides). */
  async release(): Promise<void> {
    if (this.state === "done" || this.state === "aborted") return;
    this.state = "aborted";
    await Promise.allSettled([...this.inflight]);
    await this.handle?.close().catch(() => undefined);
    this.handle = undefined;
  }

  /** Stops and removes what this writer wrote (nothing after a successful finalize). */
  async abort(): Promise<void> {
    if (this.state === "done" || this.state === "aborted") return;
    await this.release();
    const files = [this.partialDataPath, this.modelPath + PARTIAL_SUFFIX];
    // create() refused an existing data file, so a renamed one is ours and useless without model.onnx.
    if (this.dataRenamed) files.push(this.dataPath);
    await Promise.all(files.map((f) => rm(f, { force: true })));
  }

  private async copyUntouched(handle: FileHandle): Promise<void> {
    let buffer: Uint8Array | undefined;
    for (const p of this.planned) {
      if (p.rewritten) continue;
      const { offset, length } = p.region;
      buffer ??= new Uint8Array(COPY_CHUNK);
      for (let done = 0; done < length; done += COPY_CHUNK) {
        const chunk = buffer.subarray(0, Math.min(COPY_CHUNK, length - done));
        await this.data.readRange(p.src, done, chunk);
        await writeAll(handle, chunk, offset + done);
      }
    }
  }

  private rewrittenPlan(name: string): Planned {
    this.assertOpen(`tensor "${name}"`);
    const p = this.byName.get(name);
    if (!p || !p.rewritten) {
      throw new InvalidArgumentError(
        `tensor "${name}"`,
        "was not named as rewritten when the writer was created; pass it in the rewritten set",
      );
    }
    return p;
  }

  private assertOpen(subject: string): void {
    if (this.state !== "open") {
      throw new InvalidArgumentError(subject, `the writer for ${this.outDir} is ${this.state}; create a new one`);
    }
  }
}

/** Makes an output tensor refer to its region of OUT/model.onnx.data and drop inline data. */
function pointAtOutputData(t: TensorProto, region: Region): void {
  t.externalData = [
    create(StringStringEntryProtoSchema, { key: "location", value: DATA_FILE }),
    create(StringStringEntryProtoSchema, { key: "offset", value: String(region.offset) }),
    create(StringStringEntryProtoSchema, { key: "length", value: String(region.length) }),
  ];
  t.dataLocation = TensorProto_DataLocation.EXTERNAL;
  // Cleared, not emptied: the ONNX checker rejects an external tensor that also has data fields.
  const f = TensorProtoSchema.field;
  for (const field of [f.rawData, f.floatData, f.int32Data, f.int64Data, f.doubleData, f.uint64Data, f.stringData]) {
    clearField(t, field);
  }
}

async function writeAll(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}

function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Where every tensor goes in OUT/model.onnx.data. Deterministic for a model and a rewritten set,
 * so the workers of a cluster compute the same regions as the coordinator's writer and write
 * their pruned tensors straight into the shared partial file.
 */
export function planLayout(src: LoadedModel, data: TensorData, dir: string, rewritten: ReadonlySet<string>): { outModel: ModelProto; planned: Planned[]; byName: Map<string, Planned>; end: number } {
  const graph = src.model.graph!;
  const outModel = clone(ModelProtoSchema, src.model);
  const srcTensors = allTensors(src.model);
  const outTensors = allTensors(outModel);
  const nInit = graph.initializer.length;
  const planned: Planned[] = [];
  const byName = new Map<string, Planned>();
  const dataPath = join(dir, DATA_FILE);
  let end = 0;
  for (let i = 0; i < srcTensors.length; i++) {
    const t = srcTensors[i]!;
    const isRewritten = i < nInit && rewritten.has(t.name);
    if (!isRewritten && !isExternal(t)) continue;
    let length: number;
    if (isRewritten) {
      length = data.byteLength(t);
    } else {
      const range = data.externalRange(t)!;
      if (range.file === dataPath || range.file === dataPath + PARTIAL_SUFFIX) {
        throw new InvalidArgumentError(
          dir,
          `is the source model's own folder (${range.file} holds its weights); choose another --out folder`,
        );
      }
      length = range.length;
    }
    const offset = alignUp(end, DATA_ALIGNMENT);
    end = offset + length;
    const p: Planned = { src: t, out: outTensors[i]!, region: { offset, length }, rewritten: isRewritten };
    planned.push(p);
    if (i < nInit) byName.set(t.name, p);
  }
  return { outModel, planned, byName, end };
}

/** The regions of the rewritten initializers (what a cluster worker writes). */
export function rewrittenRegions(src: LoadedModel, data: TensorData, outDir: string, rewritten: ReadonlySet<string>): Map<string, Region> {
  const { byName } = planLayout(src, data, resolve(outDir), rewritten);
  return new Map([...byName].filter(([, p]) => p.rewritten).map(([name, p]) => [name, { ...p.region }]));
}
