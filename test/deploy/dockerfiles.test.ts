// deploy/*.Dockerfile without docker: every COPY source exists in the build context (and is not
// excluded by the Dockerfile's own .dockerignore) or comes from an earlier stage that made it,
// the ENTRYPOINT runs a compiled entry point, the worker runs on a CUDA 12 + cuDNN runtime base
// with onnxruntime-node's CUDA 12 build, the coordinator does not.
import { strict as assert } from "node:assert";
import { existsSync, readFileSync } from "node:fs";
import { join, posix } from "node:path";
import { test } from "node:test";
import { CHART_DIR, REPO, readYamlFile } from "./deployFiles.js";
import { WORKER_NODE_FLAGS } from "../../services/worker/src/nodeFlags.js";

interface Instruction {
  op: string;
  args: string;
  line: number;
}

interface Stage {
  index: number;
  name?: string;
  base: string;
  workdir: string;
  instructions: Instruction[];
}

interface Dockerfile {
  path: string;
  globalArgs: Map<string, string>;
  stages: Stage[];
}

/** Instructions with continuation lines joined and comments dropped. */
function instructions(text: string): Instruction[] {
  const out: Instruction[] = [];
  let buf = "";
  let start = 0;
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (buf === "" && (line === "" || line.startsWith("#"))) return;
    if (buf !== "" && line.startsWith("#")) return;
    if (buf === "") start = i + 1;
    if (line.endsWith("\\")) {
      buf += line.slice(0, -1) + " ";
      return;
    }
    buf += line;
    const m = /^(\S+)\s*([\s\S]*)$/.exec(buf.trim())!;
    out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start });
    buf = "";
  });
  return out;
}

function parseDockerfile(rel: string): Dockerfile {
  const path = join(REPO, rel);
  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  const subst = (s: string) => s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (whole, a?: string, b?: string) => globalArgs.get((a ?? b)!) ?? whole);
  for (const ins of instructions(readFileSync(path, "utf8"))) {
    if (ins.op === "ARG" && stages.length === 0) {
      const [k, v] = ins.args.split("=", 2) as [string, string | undefined];
      globalArgs.set(k.trim(), (v ?? "").trim());
    } else if (ins.op === "FROM") {
      const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      assert.ok(m, `${rel}:${ins.line}: cannot read FROM ${ins.args}`);
      stages.push({ index: stages.length, name: m[2], base: subst(m[1]!), workdir: "/", instructions: [] });
    } else {
      assert.ok(stages.length > 0, `${rel}:${ins.line}: ${ins.op} before the first FROM`);
      const stage = stages[stages.length - 1]!;
      if (ins.op === "WORKDIR") stage.workdir = posix.resolve(stage.workdir, ins.args);
      stage.instructions.push(ins);
    }
  }
  return { path: rel, globalArgs, stages };
}

interface CopyInstr {
  from?: string;
  sources: string[];
  dest: string;
  line: number;
}

function copies(stage: Stage): CopyInstr[] {
  return stage.instructions.filter((i) => i.op === "COPY" || i.op === "ADD").map((i) => {
    const words = i.args.startsWith("[") ? (JSON.parse(i.args) as string[]) : i.args.split(/\s+/);
    const flags = words.filter((w) => w.startsWith("--"));
    const paths = words.filter((w) => !w.startsWith("--"));
    assert.ok(paths.length >= 2, `line ${i.line}: ${i.op} needs a source and a destination`);
    const from = flags.find((f) => f.startsWith("--from="))?.slice("--from=".length);
    return { from, sources: paths.slice(0, -1), dest: paths[paths.length - 1]!, line: i.line };
  });
}

function exec(stage: Stage, op: "ENTRYPOINT" | "CMD"): string[] | undefined {
  const ins = stage.instructions.filter((i) => i.op === op).pop();
  if (!ins) return undefined;
  assert.ok(ins.args.startsWith("["), `${op} must use the exec form (JSON array) so that node is PID 1 and gets SIGTERM`);
  return JSON.parse(ins.args) as string[];
}

function runs(stage: Stage): string[] {
  return stage.instructions.filter((i) => i.op === "RUN").map((i) => i.args);
}

/** .dockerignore semantics (last matching pattern wins, `!` re-includes), for the patterns used here. */
function ignoredBy(patterns: string[]): (path: string) => boolean {
  const rules = patterns.map((p) => {
    const negate = p.startsWith("!");
    const glob = posix.normalize(negate ? p.slice(1) : p).replace(/^\/+|\/+$/g, "");
    // "**" is any number of folders (none included); "*" and "?" stay within one name.
    const segment = (seg: string) => seg.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]");
    const source = glob.split("/").map((seg, i, all) => seg === "**" ? (i === all.length - 1 ? ".*" : "(?:.*/)?") : segment(seg) + (i === all.length - 1 ? "" : "/")).join("");
    const re = new RegExp(`^${source}$`);
    return { negate, re };
  });
  return (path: string) => {
    const parts = posix.normalize(path).replace(/^\.?\/+/, "").split("/");
    let ignored = false;
    for (const r of rules) {
      // a pattern matches the path or any folder above it
      if (parts.some((_, i) => r.re.test(parts.slice(0, i + 1).join("/")))) ignored = !r.negate;
    }
    return ignored;
  };
}

function dockerignore(rel: string): (path: string) => boolean {
  // BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile, else the context's .dockerignore.
  for (const candidate of [`${rel}.dockerignore`, ".dockerignore"]) {
    const p = join(REPO, candidate);
    if (existsSync(p)) {
      const patterns = readFileSync(p, "utf8").split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
      return ignoredBy(patterns);
    }
  }
  return () => false;
}

const tsOutDir = (JSON.parse(readFileSync(join(REPO, "tsconfig.json"), "utf8")) as { compilerOptions: { outDir: string } }).compilerOptions.outDir.replace(/^\.\//, "");

function checkCopies(df: Dockerfile): void {
  const ignored = dockerignore(df.path);
  for (const stage of df.stages) {
    for (const c of copies(stage)) {
      const where = `${df.path}:${c.line}`;
      if (c.from === undefined) {
        for (const src of c.sources) {
          assert.ok(existsSync(join(REPO, src)), `${where}: COPY source ${src} does not exist in the repository (the build context)`);
          assert.ok(!ignored(src), `${where}: COPY source ${src} is excluded by the .dockerignore`);
        }
        continue;
      }
      const source = df.stages.find((s) => s.name === c.from || String(s.index) === c.from);
      assert.ok(source && source.index < stage.index, `${where}: --from=${c.from} is not an earlier stage`);
      for (const src of c.sources) {
        assert.ok(src.startsWith("/"), `${where}: copy from a stage by absolute path, got ${src}`);
        if (src === "/usr/local/bin/node") {
          assert.match(source.base, /^node:24[.-]/, `${where}: the node binary must come from an official node:24 (LTS) image`);
          continue;
        }
        const rel = posix.relative(source.workdir, src);
        assert.ok(!rel.startsWith(".."), `${where}: ${src} is outside stage ${c.from}'s WORKDIR ${source.workdir}`);
        const top = rel.split("/")[0];
        if (top === "node_modules") {
          assert.ok(runs(source).some((r) => /\bnpm ci\b/.test(r)), `${where}: stage ${c.from} never runs npm ci, so it has no node_modules`);
        } else if (top === tsOutDir) {
          assert.ok(runs(source).some((r) => /\bnpx tsc\b/.test(r)), `${where}: stage ${c.from} never compiles, so it has no ${tsOutDir}/`);
          const tsSource = posix.relative(tsOutDir, rel);
          assert.ok(existsSync(join(REPO, tsSource)), `${where}: ${src} would come from ${tsSource}, which does not exist`);
          assert.ok(copies(source).some((cc) => cc.from === undefined && cc.sources.some((s) => tsSource === s || tsSource.startsWith(`${s.replace(/\/$/, "")}/`))), `${where}: stage ${c.from} does not copy ${tsSource} before compiling`);
        } else {
          assert.fail(`${where}: cannot tell where ${src} in stage ${c.from} comes from`);
        }
      }
    }
  }
}

function checkEntrypoint(df: Dockerfile, entry: string, nodeFlags: readonly string[] = []): void {
  const final = df.stages[df.stages.length - 1]!;
  const ep = exec(final, "ENTRYPOINT");
  assert.deepEqual(ep, ["node", ...nodeFlags, entry], `${df.path}: ENTRYPOINT`);
  // It exists in the build output of `npx tsc` (which these tests run from) and in the image.
  assert.ok(existsSync(join(REPO, entry)), `${entry} is not in the build output (run npx tsc -p tsconfig.json)`);
  const rel = posix.relative(final.workdir, posix.resolve(final.workdir, entry));
  assert.ok(copies(final).some((c) => c.sources.some((s) => rel.startsWith(`${posix.relative(final.workdir, posix.resolve(final.workdir, c.dest)).replace(/\/$/, "")}/`))), `${df.path}: no COPY puts ${entry} into ${final.workdir}`);
  // dist/**/*.js are ES modules only next to package.json's "type": "module".
  assert.ok(copies(final).some((c) => c.from === undefined && c.sources.includes("package.json")), `${df.path}: the runtime stage needs package.json ("type": "module")`);
  const user = final.instructions.filter((i) => i.op === "USER").pop()?.args;
  assert.ok(user && !/^(root|0)(:|$)/.test(user), `${df.path}: the runtime stage must switch to a non-root USER, got ${user ?? "none"}`);
  const expose = final.instructions.filter((i) => i.op === "EXPOSE").flatMap((i) => i.args.split(/\s+/)).map(Number).sort((a, b) => a - b);
  assert.deepEqual(expose, [9090, 50051], `${df.path}: EXPOSE the gRPC and metrics ports the chart uses`);
}

function checkBuildStage(df: Dockerfile): void {
  const build = df.stages[0]!;
  assert.equal(build.base, "node:24-bookworm", `${df.path}: the build stage runs on node:24-bookworm`);
  assert.ok(runs(build).some((r) => /^(ONNXRUNTIME_NODE_INSTALL=skip )?npm ci\b/.test(r) && !r.includes("--omit=dev")), `${df.path}: the build stage installs dev dependencies (npm ci) for tsc`);
  assert.ok(runs(build).some((r) => /^npx tsc\b/.test(r)), `${df.path}: the build stage runs npx tsc`);
}

function prodInstalls(df: Dockerfile): string[] {
  return df.stages.flatMap(runs).filter((r) => /\bnpm ci\b/.test(r) && r.includes("--omit=dev"));
}

/** The build command documented in the Dockerfile's header tags the image the chart pulls. */
function checkDocumentedTag(rel: string, component: "coordinator" | "worker"): void {
  const values = readYamlFile(join(CHART_DIR, "values.yaml")) as Record<string, { image: { repository: string } }>;
  const chart = readYamlFile(join(CHART_DIR, "Chart.yaml")) as { appVersion: string };
  const text = readFileSync(join(REPO, rel), "utf8");
  const cmd = `docker build -f ${rel} -t ${values[component]!.image.repository}:${chart.appVersion} .`;
  assert.ok(text.includes(cmd), `${rel}: document the build command \`${cmd}\``);
}

test("worker.Dockerfile: every COPY source exists in the context or an earlier stage made it", () => {
  checkCopies(parseDockerfile("deploy/worker.Dockerfile"));
});

test("coordinator.Dockerfile: every COPY source exists in the context or an earlier stage made it", () => {
  checkCopies(parseDockerfile("deploy/coordinator.Dockerfile"));
});

test("both images compile on node:24-bookworm and run a compiled entry point as a non-root user", () => {
  const worker = parseDockerfile("deploy/worker.Dockerfile");
  const coordinator = parseDockerfile("deploy/coordinator.Dockerfile");
  checkBuildStage(worker);
  checkBuildStage(coordinator);
  // The worker's node options (services/worker/src/nodeFlags.ts), as `atvp cluster up` passes them.
  checkEntrypoint(worker, "dist/services/worker/src/main.js", WORKER_NODE_FLAGS);
  checkEntrypoint(coordinator, "dist/services/coordinator/src/main.js");
  checkDocumentedTag("deploy/worker.Dockerfile", "worker");
  checkDocumentedTag("deploy/coordinator.Dockerfile", "coordinator");
});

test("the worker image runs on a CUDA 12 + cuDNN runtime base with onnxruntime-node's CUDA 12 build and Node 24", () => {
  const df = parseDockerfile("deploy/worker.Dockerfile");
  const final = df.stages[df.stages.length - 1]!;
  assert.match(final.base, /^nvidia\/cuda:12\.\d+\.\d+-cudnn(9)?-runtime-ubuntu\d+\.\d+$/, `runtime base ${final.base}`);
  const installs = prodInstalls(df);
  assert.ok(installs.length > 0, "no production npm ci --omit=dev");
  // package.json's allowScripts denies onnxruntime-node's install script to npm, so the image
  // runs it itself, asking for the CUDA 12 provider, in the same RUN as the production install.
  for (const r of installs) {
    assert.match(r, /ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules\/onnxruntime-node\/script\/install\.js/, `production install without the CUDA 12 build: ${r}`);
    assert.match(r, /libonnxruntime_providers_cuda\.so/, `the CUDA provider is not checked after the install: ${r}`);
  }
  assert.ok(copies(final).some((c) => c.sources.includes("/usr/local/bin/node")), "the runtime stage has no Node binary");
});

test("the coordinator image is a slim CPU image: no CUDA base, no CUDA build of onnxruntime-node", () => {
  const df = parseDockerfile("deploy/coordinator.Dockerfile");
  const final = df.stages[df.stages.length - 1]!;
  assert.equal(final.base, "node:24-bookworm-slim");
  for (const s of df.stages) assert.doesNotMatch(s.base, /nvidia|cuda/i, `stage ${s.name ?? s.index} is based on ${s.base}`);
  const text = readFileSync(join(REPO, df.path), "utf8");
  assert.doesNotMatch(text, /ONNXRUNTIME_NODE_INSTALL=cuda|onnxruntime-node-install=cuda/, "the coordinator must keep onnxruntime-node's bundled CPU binaries");
  assert.ok(prodInstalls(df).length > 0, "no production npm ci --omit=dev");
});

test("every npm ci in both images skips onnxruntime-node's download unless it asks for CUDA, and leaves the node-linux-* runtime pins out", () => {
  for (const path of ["deploy/worker.Dockerfile", "deploy/coordinator.Dockerfile"]) {
    const df = parseDockerfile(path);
    const installs = df.stages.flatMap(runs).filter((r) => /\bnpm ci\b/.test(r));
    assert.ok(installs.length >= 2, `${path}: expected a build and a production npm ci`);
    for (const r of installs) {
      assert.match(r, /ONNXRUNTIME_NODE_INSTALL=skip npm ci\b/, `${path}: npm ci without ONNXRUNTIME_NODE_INSTALL=skip: ${r}`);
      assert.match(r, /--omit=optional\b/, `${path}: npm ci would install the development runtime (node-linux-*): ${r}`);
      assert.doesNotMatch(r, /--onnxruntime-node-install/, `${path}: the deprecated npm flag is gone: ${r}`);
    }
  }
});

test("the .dockerignore parser used above follows Docker's rules", () => {
  const ig = ignoredBy(["*", "!package.json", "!services", "services/**/*.md"]);
  assert.equal(ig("node_modules"), true);
  assert.equal(ig("package.json"), false);
  assert.equal(ig("services/worker/src/main.ts"), false);
  assert.equal(ig("services/README.md"), true);
  assert.equal(ig("dist/services/worker/src/main.js"), true);
});
