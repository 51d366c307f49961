// Test certificates made with openssl (EC P-256, valid 2 days) in a folder of the test's own.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

export class TestPki {
  constructor(readonly dir: string) {}

  file(name: string): string {
    return join(this.dir, name);
  }

  private openssl(...args: string[]): void {
    const r = spawnSync("openssl", args, { cwd: this.dir, encoding: "utf8", timeout: 20_000 });
    if (r.error) throw new Error(`openssl ${args[0]}: ${r.error.message}`);
    assert.equal(r.status, 0, `openssl ${args.join(" ")} failed:\n${r.stderr}`);
  }

  /** NAME.crt and NAME.key of a self-signed CA. */
  ca(name: string): void {
    this.openssl("req", "-x509", ...EC, "-keyout", `${name}.key`, "-out", `${name}.crt`, "-days", "2", "-subj", `/CN=${name}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  }

  /** NAME.crt and NAME.key signed by CA, with the given x509v3 extensions. */
  leaf(name: string, ca: string, extensions: string): void {
    this.openssl("req", ...EC, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    writeFileSync(this.file(`${name}.ext`), extensions);
    this.openssl("x509", "-req", "-in", `${name}.csr`, "-CA", `${ca}.crt`, "-CAkey", `${ca}.key`, "-set_serial", `0x${randomBytes(8).toString("hex")}`,
      "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.crt`);
  }
}
