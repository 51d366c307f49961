/** Sizes on the command line: 80GiB, 512MiB, 1.5TB, 1000000 (bytes). */
import { InvalidArgumentError } from "../../core/src/index.js";

const UNITS: Record<string, number> = {
  "": 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12, kib: 2 ** 10, mib: 2 ** 20, gib: 2 ** 30, tib: 2 ** 40,
};

export function parseByteSize(raw: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(raw);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new InvalidArgumentError(flag, `expects a size such as 80GiB, 512MiB or 1TB, got ${JSON.stringify(raw)}`);
  const bytes = Math.floor(Number(m[1]) * unit);
  if (!(bytes > 0)) throw new InvalidArgumentError(flag, `must be more than 0 bytes, got ${JSON.stringify(raw)}`);
  return bytes;
}
