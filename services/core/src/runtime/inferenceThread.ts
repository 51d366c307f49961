/**
 * The worker-thread side of InferenceHost. onnxruntime's session creation and run are
 * synchronous native calls; running them here keeps the main event loop (gRPC, NATS heartbeats,
 * /metrics, progress output) responsive.
 */
import { parentPort } from "node:worker_threads";
import * as ort from "onnxruntime-node";
import type { WireTensor } from "./wireTensor.js";
import type { HostRequest, HostResponse } from "./inferenceProtocol.js";

interface Session {
  session: ort.InferenceSession;
  /** the shared buffers the main thread edits */
  sources: Record<string, WireTensor>;
  /** private copies onnxruntime reads */
  bound: Record<string, ort.Tensor>;
}

function bind(sources: Record<string, WireTensor>): Record<string, ort.Tensor> {
  const bound: Record<string, ort.Tensor> = {};
  for (const [name, t] of Object.entries(sources)) bound[name] = toOrt(t);
  return bound;
}

const port = parentPort;
if (!port) throw new Error("inferenceThread must run in a worker thread");
const sessions = new Map<number, Session>();
let nextSession = 1;

function toOrt(t: WireTensor): ort.Tensor {
  // onnxruntime-node rejects views of a SharedArrayBuffer at run time: bind a private copy.
  const data = t.data.buffer instanceof SharedArrayBuffer ? t.data.slice() : t.data;
  return new ort.Tensor(t.type, data as never, t.dims);
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
        logSeverityLevel: 3,
      };
      const session = await ort.InferenceSession.create(req.model, options);
      const id = nextSession++;
      sessions.set(id, { session, sources: req.bound, bound: bind(req.bound) });
      return { id: req.id, ok: true, session: id, inputNames: [...session.inputNames], outputNames: [...session.outputNames] };
    }
    case "run": {
      const s = sessions.get(req.session);
      if (!s) throw new Error(`no session ${req.session}`);
      const feeds: Record<string, ort.Tensor> = { ...s.bound };
      for (const [name, t] of Object.entries(req.feeds)) feeds[name] = toOrt(t);
      const result = await s.session.run(feeds, req.fetches);
      const outputs: Record<string, WireTensor> = {};
      for (const name of req.fetches) {
        const t = result[name]!;
        outputs[name] = { type: t.type as WireTensor["type"], dims: [...t.dims], data: t.data as WireTensor["data"] };
      }
      return { id: req.id, ok: true, outputs };
    }
    case "refresh": {
      const s = sessions.get(req.session);
      if (!s) throw new Error(`no session ${req.session}`);
      s.bound = bind(s.sources);
      return { id: req.id, ok: true };
    }
    case "release": {
      const s = sessions.get(req.session);
      sessions.delete(req.session);
      await s?.session.release();
      return { id: req.id, ok: true };
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
