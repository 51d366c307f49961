/** Flag parsing shared by the atvp commands (node:util parseArgs, with typed numeric reads). */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { InvalidArgumentError } from "../../core/src/index.js";

export type Options = NonNullable<ParseArgsConfig["options"]>;

export function parse(argv: string[], options: Options, allowPositionals = false): { values: Record<string, unknown>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: joinNegativeValues(argv, options), options, allowPositionals, strict: true });
    return { values: values as Record<string, unknown>, positionals };
  } catch (err) {
    throw new InvalidArgumentError("arguments", (err as Error).message);
  }
}

const NEGATIVE_NUMBER = /^-(\d|\.\d)/;

/**
 * `--sparsity -0.1` reads as a flag followed by an unknown short option to parseArgs, which
 * calls it "ambiguous"; a value that looks like a negative number is the flag's value, so the
 * range check that follows can say what is wrong with it.
 */
export function joinNegativeValues(argv: readonly string[], options: Options): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const next = argv[i + 1];
    const name = arg.startsWith("--") ? arg.slice(2) : undefined;
    if (name !== undefined && options[name]?.type === "string" && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      out.push(`${arg}=${next}`);
      i++;
    } else {
      out.push(arg);
    }
  }
  return out;
}

export function num(values: Record<string, unknown>, name: string): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (typeof raw !== "string" || raw.trim() === "" || !Number.isFinite(n)) {
    throw new InvalidArgumentError(`--${name}`, `expects a number, got ${JSON.stringify(raw)}`);
  }
  return n;
}

export function int(values: Record<string, unknown>, name: string): number | undefined {
  const n = num(values, name);
  if (n !== undefined && !Number.isInteger(n)) throw new InvalidArgumentError(`--${name}`, `expects an integer, got ${n}`);
  return n;
}

export function str(values: Record<string, unknown>, name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" ? v : undefined;
}

export function required(values: Record<string, unknown>, name: string): string {
  const v = str(values, name);
  if (!v) throw new InvalidArgumentError(`--${name}`, "is required");
  return v;
}

export function list(values: Record<string, unknown>, name: string): string[] {
  const v = values[name];
  return Array.isArray(v) ? (v as string[]) : [];
}
