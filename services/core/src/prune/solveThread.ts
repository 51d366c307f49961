/** A solve thread of a SolvePool: SparseGPT's factorizations, updates and Hessian rows, TAMP's token work; one task at a time. */
import { parentPort } from "node:worker_threads";
import { RuntimeError, TypedError } from "../errors.js";
import type { SolveRequest, SolveResponse, SolveResult, SolveTask } from "./solveProtocol.js";
import { outputEnergy, prepareHessian, prepareHessianTeam, sparseGptUpdate } from "./sparseGpt.js";
import { abortTeam, sharedTeam } from "./solveTeam.js";
import { CholeskyKernel } from "./choleskyKernelWasm.js";
import { addSampleRows, addSampleRowsInChunks, chunkRows, sampleRowsScratch } from "./hessian.js";
import { densityOf, normalizeRows } from "./tampDensity.js";
import { amiaSelect } from "./amiaSelect.js";

const shared = (length: number) => new Float64Array(new SharedArrayBuffer(length * 8));

function solve(task: SolveTask): SolveResult {
  if (task.kind === "factor") {
    const { u, dead } = prepareHessian(task.hessian, task.n, task.subject, task.percDamp, shared);
    return { kind: "factor", u, dead };
  }
  if (task.kind === "factorTeam") {
    const team = sharedTeam(task.control, task.rank, task.size);
    const kernel = task.memory ? CholeskyKernel.over(task.memory, task.rank) : null;
    // Every member must work alike (with the kernel, L⁻¹ lives in its memory); the pool made the
    // memory because the kernel runs in this process, so its threads have it too.
    if (task.memory && !kernel) throw new RuntimeError(task.subject, "this solve thread cannot run the factorization kernel its team was given");
    const a = kernel?.matrix ?? task.a!;
    const { u, dead, phaseMs } = prepareHessianTeam(task.hessian, task.n, task.subject, task.percDamp, team, a, task.u, task.split, kernel);
    return { kind: "factor", u, dead, phaseMs };
  }
  if (task.kind === "rows") {
    const rows = sampleRowsScratch(task.src.n);
    if (task.sample) addSampleRows(task.sample, task.sum, task.src, task.i0, task.i1, rows);
    else addSampleRowsInChunks(task.sum, task.src, task.i0, task.i1, rows, new Float64Array(Math.min(chunkRows(task.src.n), task.i1 - task.i0 + 1) * task.src.n));
    return { kind: "rows" };
  }
  if (task.kind === "density") return { kind: "density", density: densityOf(normalizeRows(task.rows), task.rows.dim, task.visual) };
  if (task.kind === "amia") return { kind: "amia", selection: amiaSelect(task.rows, task.attention, task.visual) };
  if (task.kind === "energy") return { kind: "energy", energy: outputEnergy(task.hessian, task.weight) };
  const update = sparseGptUpdate(task.weight, task.prepared, task.options);
  return { kind: "update", bytes: task.weight.bytes, update };
}

const port = parentPort!;
port.on("message", ({ id, task }: SolveRequest) => {
  let res: SolveResponse;
  try {
    const result = solve(task);
    res = { id, ok: true, result };
  } catch (err) {
    // The other members would wait for this one at their next barrier.
    if (task.kind === "factorTeam") abortTeam(task.control);
    const typed = err instanceof TypedError;
    const message = err instanceof Error ? err.message : String(err);
    const subject = typed ? err.subject : "";
    res = { id, ok: false, error: { code: typed ? String(err.code) : "RUNTIME", subject, message: subject && message.startsWith(`${subject}: `) ? message.slice(subject.length + 2) : message } };
  }
  // The updated weight goes back by transfer; U is shared, it needs none.
  port.postMessage(res, res.ok && res.result.kind === "update" ? [res.result.bytes.buffer as ArrayBuffer] : []);
});
