/**
 * A block's pruned weights into the job's shared output file. The replicas of a stage split the
 * writing: each has every pruned weight (the same bits), and writes its own byte range of them.
 */
import type { FileHandle } from "node:fs/promises";
import type { PrunedWeight, ReplicaSlice } from "../../../core/src/index.js";
import { ShardError } from "../errors.js";

/** Bytes [from, to) of the block's weights taken one after another that replica r of R writes. */
export function weightShare(totalBytes: number, share: ReplicaSlice | undefined): { from: number; to: number } {
  if (!share) return { from: 0, to: totalBytes };
  const cut = (r: number) => Math.floor((totalBytes * r) / share.replicas);
  return { from: cut(share.replica), to: cut(share.replica + 1) };
}

/**
 * Positional writes into each weight's region, then fsync: the block's weights are durable. With
 * `share`, replica r of R writes the r-th of R equal byte ranges of the block's weights taken one
 * after another (the other replicas write the rest).
 */
export async function writeWeights(handle: FileHandle, weights: readonly PrunedWeight[], regions: ReadonlyMap<string, { offset: number; length: number }>, guard: () => void, share?: ReplicaSlice): Promise<void> {
  const { from, to } = weightShare(weights.reduce((a, w) => a + w.bytes.byteLength, 0), share);
  let at = 0;
  for (const w of weights) {
    const region = regions.get(w.name);
    if (!region) throw new ShardError("INVALID_ARGUMENT", `tensor "${w.name}"`, "has no region in the output layout (was it selected?)");
    if (w.bytes.byteLength !== region.length) {
      throw new ShardError("INVALID_ARGUMENT", `tensor "${w.name}"`, `has ${w.bytes.byteLength} bytes; its region holds ${region.length}`);
    }
    // This weight's bytes [begin, end) that fall in [from, to).
    const begin = Math.max(0, from - at);
    const end = Math.min(w.bytes.byteLength, to - at);
    at += w.bytes.byteLength;
    let done = begin;
    while (done < end) {
      guard();
      const { bytesWritten } = await handle.write(w.bytes, done, end - done, region.offset + done);
      done += bytesWritten;
    }
  }
  await handle.datasync();
}
