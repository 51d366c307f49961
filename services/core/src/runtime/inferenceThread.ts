/**
 * The worker-thread side of InferenceHost. onnxruntime's session creation and run are
 * synchronous native calls; running them here keeps the main event loop (gRPC, NATS heartbeats,
 * /metrics, progress output) responsive.
 */
import { parentPort } from "node:worker_threads";
import * as ort from "onnxruntime-node";
import type { WireTensor } from "./wireTensor.js";
import { ortTensor, tensorBits } from "./ortTensor.js";
import type { HostRequest, HostResponse } from "./inferenceProtocol.js";

interface Session {
  session: ort.InferenceSession;
  /** tensors fed on every run; their buffers were transferred here and go back on unbind */
  sources: Record<string, WireTensor>;
  bound: Record<string, ort.Tensor>;
}

function bind(sources: Record<string, WireTensor>): Record<string, ort.Tensor> {
  const bound: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(sources)) bound[name] = toOrt(t);
  return bound;
}

function session(id: number): Session {
  const s = sessions.get(id);
  if (!s) throw new Error(`no session ${id}`);
  return s;
}

const port = parentPort;
if (!port) throw new Error("inferenceThread must run in a worker thread");
// Failures reach the caller as exceptions with onnxruntime's message; its own stderr logger would
// only repeat them (and print a red error for every expected CUDA probe failure).
ort.env.logLevel = "fatal";
const sessions = new Map<number, Session>();
let nextSession = 1;

function toOrt(t: WireTensor): ort.Tensor {
  // (views of shared memory are fed as they are: the engine's weights may live in a mask
  // thread's memory, maskPool.ts weightBuffer; onnxruntime-node 1.30 reads them in place)
  return ortTensor(t.type, t.data, t.dims);
}

async function handle(req: HostRequest): Promise<HostResponse> {
  switch (req.op) {
    case "load": {
      const options: ort.InferenceSession.SessionOptions = {
        executionProviders: [req.device],
        intraOpNumThreads: req.threads,
        interOpNumThreads: 1,
        executionMode: "sequential",
        graphOptimizationLevel: "all",
        // A probe (quiet) expects to fail on machines without CUDA: only fatal errors are logged.
        logSeverityLevel: req.quiet ? 4 : 3,
        // onnxruntime's arena reuses each run's buffers for the next run of the block: without
        // it every run took fresh pages from the system, and a page fault costs much on a
        // virtual machine (the medium model on one thread: 124-257k faults -> 81-89k, 10.1-11.4 s
        // -> 9.0-9.6 s, two half-sample prunes at once 7.7-8.3 s -> 6.5-6.7 s, peak RSS
        // unchanged). It goes with the session, which the engine releases after each block.
        enableCpuMemArena: true,
        // (a memory pattern is planned for one set of input shapes: samples differ in length)
        enableMemPattern: false,
      };
      const session = await ort.InferenceSession.create(req.model, options);
      const id = nextSession++;
      sessions.set(id, { session, sources: req.bound, bound: bind(req.bound) });
      return { id: req.id, ok: true, session: id, inputNames: [...session.inputNames], outputNames: [...session.outputNames] };
    }
    case "run": {
      const s = session(req.session);
      const feeds: Record<string, ort.Tensor> = { ...s.bound };
      for (const [name, t] of Object.entries(req.feeds)) feeds[name] = toOrt(t);
      const result = await s.session.run(feeds, req.fetches);
      const outputs: Record<string, WireTensor> = {};
      for (const name of req.fetches) {
        const t = result[name]!;
        outputs[name] = { type: t.type as WireTensor["type"], dims: [...t.dims], data: tensorBits(t) };
      }
      return { id: req.id, ok: true, outputs };
    }
    case "close": {
      // Release every session before the thread ends: tearing onnxruntime down inside a
      // terminated thread can abort the whole process.
      for (const [id, s] of sessions) {
        sessions.delete(id);
        await s.session.release();
      }
      setImmediate(() => port!.close());
      return { id: req.id, ok: true };
    }
    case "bind": {
      const s = session(req.session);
      s.sources = { ...s.sources, ...req.tensors };
      s.bound = bind(s.sources);
      return { id: req.id, ok: true };
    }
    case "unbind":
    case "release": {
      const s = session(req.session);
      const tensors = s.sources;
      s.sources = {};
      s.bound = {};
      if (req.op === "release") {
        sessions.delete(req.session);
        await s.session.release();
      }
      return { id: req.id, ok: true, outputs: tensors };
    }
  }
}

port.on("message", (req: HostRequest) => {
  handle(req).then(
    (res) => {
      const transfer: ArrayBuffer[] = [];
      if ("outputs" in res && res.outputs) {
        for (const t of Object.values(res.outputs)) {
          const buf = t.data.buffer;
          if (buf instanceof ArrayBuffer && buf.byteLength === t.data.byteLength && !transfer.includes(buf)) transfer.push(buf);
        }
      }
      try {
        port.postMessage(res, transfer);
      } catch {
        port.postMessage(res);
      }
    },
    (err: unknown) => port.postMessage({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) } satisfies HostResponse),
  );
});
