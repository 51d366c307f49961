// The services' typed errors share one base: a caller can switch on `code` and read `subject`
// whatever layer threw.
import { test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { InvalidArgumentError, TypedError } from "../../services/core/src/errors.js";
import { JobNotFoundError } from "../../services/coordinator/src/state/errors.js";
import { KubeGoneError } from "../../services/coordinator/src/k8s/errors.js";
import { RpcError } from "../../services/rpc/status.js";
import { CliError } from "../../services/cli/src/cliError.js";
import { CheckpointError } from "../../services/worker/src/errors.js";

test("engine, worker, state, Kubernetes, gRPC and CLI errors are TypedErrors with a code and a subject", () => {
  const cases: [TypedError, string | number, string, string][] = [
    [new InvalidArgumentError("--sparsity", "must be in [0, 1)"), "INVALID_ARGUMENT", "--sparsity", "--sparsity: must be in [0, 1)"],
    [new CheckpointError("/w/states/input-1.bin", "is truncated"), "EXTERNAL_DATA", "/w/states/input-1.bin", "/w/states/input-1.bin: is truncated"],
    [new JobNotFoundError("job-1"), "NOT_FOUND", "job-1", "job-1: no such job"],
    [new KubeGoneError("ns pods", "too old"), "GONE", "ns pods", "ns pods: too old"],
    // These name their subject inside the message: no prefix.
    [new RpcError(status.NOT_FOUND, "job job-2 not found"), status.NOT_FOUND, "", "job job-2 not found"],
    [new CliError("CLUSTER", "no cluster.json"), "CLUSTER", "", "no cluster.json"],
  ];
  for (const [err, code, subject, message] of cases) {
    assert.ok(err instanceof TypedError && err instanceof Error, err.name);
    assert.equal(err.code, code, err.name);
    assert.equal(err.subject, subject, err.name);
    assert.equal(err.message, message, err.name);
  }
  assert.equal(new CliError("CLUSTER", "x").tag, "CLUSTER");
  assert.equal(new RpcError(status.INTERNAL, "x").name, "RpcError");
});
