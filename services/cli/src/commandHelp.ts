/**
 * `atvp COMMAND --help`: the part of the top-level usage that describes COMMAND (its line and
 * the indented lines under it), so every command's help stays in step with `atvp help`.
 */

/** True when the flags ask for help; a `--` ends the flags, so a value after it is never help. */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const arg of argv) {
    if (arg === "--") return false;
    if (arg === "--help" || arg === "-h") return true;
  }
  return false;
}

/** Each entry of the usage: a line indented by two spaces and the more indented lines under it. */
function entries(usage: string): string[][] {
  const out: string[][] = [];
  for (const line of usage.split("\n")) {
    if (/^ {2}\S/.test(line)) out.push([line.slice(2)]);
    else if (/^ {3,}\S/.test(line) && out.length > 0) out[out.length - 1]!.push(line.slice(2));
    else if (!line.startsWith(" ")) out.push([]); // a heading or blank line ends the entry
  }
  return out.filter((e) => e.length > 0);
}

/**
 * The usage of `command` (e.g. "prune", "cluster up"; "cluster" gives every cluster
 * subcommand), with the notes it refers to (an entry such as "CONNECTION: ..." whose first word
 * appears in the command's text); undefined for a command the usage does not describe.
 */
export function commandUsage(usage: string, command: string): string | undefined {
  const all = entries(usage);
  const chosen = all.filter((e) => e[0] === command || e[0]!.startsWith(command + " "));
  if (chosen.length === 0) return undefined;
  const text = chosen.flat().join("\n");
  const notes = all.filter((e) => {
    const word = /^([A-Z][A-Z_]*)\b/.exec(e[0]!)?.[1];
    return word !== undefined && new RegExp(`\\b${word}\\b`).test(text);
  });
  const lead = "usage: atvp ";
  // Continuation lines keep their column under the command's flags.
  const body = chosen.map((e) => e.map((l, i) => (i === 0 ? l : " ".repeat(lead.length - 2) + l)).join("\n")).join("\n");
  return `${lead}${body.replace(/\n(?=\S)/g, "\n       atvp ")}\n${notes.length > 0 ? "\n" + notes.map((e) => "  " + e.join("\n  ")).join("\n") + "\n" : ""}`;
}
