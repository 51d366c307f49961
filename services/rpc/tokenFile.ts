/**
 * The shared token read from a file (`--token-file`): it keeps the secret out of command lines
 * (`ps`) and environments, and a restarted process given the same flags finds it again.
 */
import { readFileSync } from "node:fs";
import { InvalidArgumentError } from "../core/src/index.js";

export function readTokenFile(path: string, flag = "--token-file"): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new InvalidArgumentError(flag, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const token = text.trim();
  if (!token) throw new InvalidArgumentError(flag, `${path} is empty`);
  return token;
}
