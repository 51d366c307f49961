/**
 * The job's work dir, on storage every worker shares: what makes a shard resumable by any worker.
 *
 *   states/input-<b>.bin   the boundary states of all samples entering block b (stateFile.ts)
 *   states/input-<b>.r<r>of<R>.bin   with R data-parallel replicas: replica r's share of them
 *   blocks/<b>.json        {"report": BlockReport, "layers": LayerReport[]}
 *   exchange/<b>/<topic>.r<replica>.bin   a replica's per-sample records (dataplane/exchangeFile.ts)
 *
 * A block is done iff blocks/<b>.json exists. It is written last (tmp + fsync + rename), after
 * the block's pruned weights are synced into the output and states/input-<b+1>.bin is complete,
 * so a worker killed at any point leaves either a done block or one to rerun, never half of one.
 * With R replicas each writes a share of the block's weights before its states entering b+1, and
 * replica 0 writes blocks/<b>.json once every replica's states entering b+1 exist.
 */
import { syncDir, type BlockReport, type LayerReport } from "../../../core/src/index.js";
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { CheckpointError } from "../errors.js";

export interface BlockRecord {
  report: BlockReport;
  layers: LayerReport[];
}

/** Which replica's view of the work dir (its own share of the states); absent or R = 1: the only one. */
export interface ReplicaView {
  replica: number;
  replicas: number;
}

export class WorkDir {
  constructor(readonly root: string, readonly view?: ReplicaView) {}

  statesPath(block: number): string {
    return this.statesPathOf(block, this.view?.replica ?? 0);
  }

  /** The states entering `block` that replica `replica` of this view's stage writes. */
  statesPathOf(block: number, replica: number): string {
    const v = this.view;
    return join(this.root, "states", v && v.replicas > 1 ? `input-${block}.r${replica}of${v.replicas}.bin` : `input-${block}.bin`);
  }

  /**
   * Whether this replica is done with block b: replica 0 writes the block's record (after its
   * share of the weights, its states, and every other replica's states); another replica owes
   * its share of the weights and then of the states entering b + 1.
   */
  isDoneHere(block: number): Promise<boolean> {
    const v = this.view;
    return v && v.replica > 0 ? exists(this.statesPath(block + 1)) : this.isDone(block);
  }

  blockPath(block: number): string {
    return join(this.root, "blocks", `${block}.json`);
  }

  async prepare(): Promise<void> {
    await mkdir(join(this.root, "states"), { recursive: true });
    await mkdir(join(this.root, "blocks"), { recursive: true });
  }

  isDone(block: number): Promise<boolean> {
    return exists(this.blockPath(block));
  }

  hasStates(block: number): Promise<boolean> {
    return exists(this.statesPath(block));
  }

  async readBlock(block: number): Promise<BlockRecord> {
    const path = this.blockPath(block);
    let record: BlockRecord;
    try {
      record = JSON.parse(await readFile(path, "utf8")) as BlockRecord;
    } catch (err) {
      throw new CheckpointError(path, `cannot read the record of done block ${block}: ${(err as Error).message}`, { cause: err });
    }
    if (record?.report?.index !== block || !Array.isArray(record.layers)) {
      throw new CheckpointError(path, `is not the record of block ${block}`);
    }
    return record;
  }

  /** Marks the block done: everything it produced must already be durable. */
  writeBlock(block: number, record: BlockRecord, beforeRename?: () => void): Promise<void> {
    return writeFileAtomic(this.blockPath(block), JSON.stringify(record, null, 1) + "\n", beforeRename);
  }
}

/** A temp name beside `path` that no other writer (process or worker) picks. */
export function tempPath(path: string): string {
  return `${path}.tmp-${process.pid}-${randomBytes(4).toString("hex")}`;
}

/** `beforeRename` may throw to leave `path` as it was (a run that lost its shard meanwhile). */
export async function writeFileAtomic(path: string, text: string | Uint8Array, beforeRename?: () => void): Promise<void> {
  const tmp = tempPath(path);
  try {
    const h = await open(tmp, "w");
    try {
      await h.writeFile(text);
      await h.sync();
    } finally {
      await h.close();
    }
    beforeRename?.();
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {});
    throw err;
  }
  await syncDir(dirname(path));
}

export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

export { syncDir };
