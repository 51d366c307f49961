/** Makes renames inside a folder durable (fsync of the folder). */
import { open } from "node:fs/promises";

// Not every platform can open a directory, and nothing depends on it: best effort.
export async function syncDir(dir: string): Promise<void> {
  try {
    const h = await open(dir, "r");
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  } catch {
    // best effort
  }
}
