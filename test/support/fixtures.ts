// Paths and temp folders shared by the tests. The shared fixtures are read-only: never write there.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("package.json not found above the test file");
    dir = up;
  }
  return dir;
}

export const REPO = repoRoot();
export const FIXTURE_DIR = process.env.ATVP_FIXTURE_DIR ?? resolve(REPO, "../shared/fixtures/tiny-llama-fp16-genai");
export const FIXTURE_MODEL = join(FIXTURE_DIR, "model.onnx");
export const CLI = join(REPO, "dist/services/cli/src/main.js");

export function tempDir(prefix: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), `atvp-${prefix}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}
