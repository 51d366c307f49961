// Each package (services/core, coordinator, worker, rpc, cli, observability) has one public face,
// its index.ts: no source file imports a module deeper inside another package.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { REPO } from "../support/fixtures.js";

const SERVICES = join(REPO, "services");
const PACKAGES = ["core/src", "coordinator/src", "worker/src", "rpc", "cli/src", "observability"];

function packageOf(file: string): string | undefined {
  const rel = relative(SERVICES, file);
  return PACKAGES.find((p) => rel.startsWith(p + "/"));
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === "gen" ? [] : sources(path);
    return e.name.endsWith(".ts") ? [path] : [];
  });
}

test("every package has an index.ts, and imports across packages go through it", () => {
  for (const p of PACKAGES) assert.ok(existsSync(join(SERVICES, p, "index.ts")), `services/${p}/index.ts`);
  const deep: string[] = [];
  let crossing = 0;
  for (const file of sources(SERVICES)) {
    const from = packageOf(file);
    for (const m of readFileSync(file, "utf8").matchAll(/from\s+"(\.{1,2}\/[^"]+)"/g)) {
      const target = resolve(dirname(file), m[1]!);
      const to = packageOf(target);
      if (!to || to === from) continue;
      crossing++;
      if (target !== join(SERVICES, to, "index.js")) deep.push(`${relative(REPO, file)} imports ${m[1]}`);
    }
  }
  assert.ok(crossing > 20, `only ${crossing} imports across packages: is the scan reading the sources?`);
  assert.deepEqual(deep, []);
});
