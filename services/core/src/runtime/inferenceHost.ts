/**
 * Runs onnxruntime sessions on a dedicated worker thread. Tensors bound to a session (the
 * block's weights) are moved, not copied: their buffers are transferred to the inference thread
 * on load/bind and come back on unbind/release, so a block's weights exist once in memory.
 */
import { Worker } from "node:worker_threads";
import { RuntimeError } from "../errors.js";
import type { ExecutionDevice, HostRequest, HostResponse } from "./inferenceProtocol.js";
import type { WireTensor } from "./wireTensor.js";
import { clampThreads } from "./threadLimit.js";

export type { ExecutionDevice } from "./inferenceProtocol.js";

export interface InferenceHostOptions {
  /** onnxruntime intra-op threads */
  threads: number;
  /** "auto" tries CUDA and falls back to CPU with a warning */
  device: ExecutionDevice | "auto";
  /** where warnings go (defaults to stderr) */
  warn?: (message: string) => void;
}

export interface SessionHandle {
  readonly id: number;
  readonly label: string;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
}

type Pending = { resolve: (r: HostResponse & { ok: true }) => void; reject: (e: Error) => void };
type Distributive<T> = T extends unknown ? Omit<T, "id"> : never;

export class InferenceHost {
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private device: ExecutionDevice | "auto";
  private closed = false;

  private constructor(private readonly options: InferenceHostOptions) {
    this.device = options.device;
    this.worker = new Worker(new URL("./inferenceThread.js", import.meta.url));
    this.worker.on("message", (res: HostResponse) => {
      const p = this.pending.get(res.id);
      if (!p) return;
      this.pending.delete(res.id);
      if (res.ok) p.resolve(res);
      else p.reject(new Error(res.error));
    });
    this.worker.on("error", (err) => this.failAll(err));
    this.worker.on("exit", (code) => {
      if (!this.closed) this.failAll(new Error(`inference thread exited with code ${code}`));
    });
  }

  static start(options: InferenceHostOptions): InferenceHost {
    const warn = options.warn ?? ((m: string) => process.stderr.write(m + "\n"));
    return new InferenceHost({ ...options, threads: clampThreads(options.threads, warn) });
  }

  get threads(): number {
    return this.options.threads;
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private call(req: Distributive<HostRequest>, transfer: ArrayBuffer[] = []): Promise<HostResponse & { ok: true }> {
    if (this.closed) return Promise.reject(new Error("inference host is closed"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ ...req, id }, transfer);
    });
  }

  /**
   * Loads a model; `bound` tensors are fed on every run. Their buffers move to the inference
   * thread (they are detached here) until unbind() or release() gives them back.
   */
  async load(label: string, model: Uint8Array, bound: Record<string, WireTensor> = {}): Promise<SessionHandle> {
    const device = await this.resolveDevice(model);
    try {
      const res = await this.call({ op: "load", model, device, threads: this.options.threads, bound }, buffersOf(bound));
      return { id: res.session!, label, inputNames: res.inputNames!, outputNames: res.outputNames! };
    } catch (err) {
      const hint = device === "cuda" ? " (the CUDA provider needs onnxruntime-node installed with --onnxruntime-node-install=cuda12 and the CUDA 12 / cuDNN 9 libraries; --device auto falls back to CPU)" : "";
      throw new RuntimeError(label, `onnxruntime could not load the graph on ${device}: ${(err as Error).message}${hint}`, { cause: err });
    }
  }

  /**
   * "auto" tries CUDA once, on a session with nothing bound (bound buffers move to the thread
   * and would be lost with a failed load), then sticks to what worked.
   */
  private async resolveDevice(model: Uint8Array): Promise<ExecutionDevice> {
    if (this.device !== "auto") return this.device;
    try {
      const probe = await this.call({ op: "load", model, device: "cuda", threads: this.options.threads, bound: {}, quiet: true });
      await this.call({ op: "release", session: probe.session! });
      this.device = "cuda";
    } catch (err) {
      (this.options.warn ?? ((m) => process.stderr.write(m + "\n")))(`warning: CUDA execution provider unavailable (${(err as Error).message.split("\n")[0]}); falling back to CPU`);
      this.device = "cpu";
    }
    return this.device;
  }

  async run(session: SessionHandle, feeds: Record<string, WireTensor>, fetches: readonly string[]): Promise<Record<string, WireTensor>> {
    try {
      const res = await this.call({ op: "run", session: session.id, feeds, fetches: [...fetches] });
      return res.outputs!;
    } catch (err) {
      throw new RuntimeError(session.label, `onnxruntime run failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Moves tensors to the inference thread and feeds them on every run from now on. */
  async bind(session: SessionHandle, tensors: Record<string, WireTensor>): Promise<void> {
    await this.call({ op: "bind", session: session.id, tensors }, buffersOf(tensors));
  }

  /** Takes the bound tensors back (to edit them); runs no longer feed them. */
  async unbind(session: SessionHandle): Promise<Record<string, WireTensor>> {
    return (await this.call({ op: "unbind", session: session.id })).outputs ?? {};
  }

  /** Frees the session and gives back its bound tensors. */
  async release(session: SessionHandle): Promise<Record<string, WireTensor>> {
    return (await this.call({ op: "release", session: session.id })).outputs ?? {};
  }

  /** The device sessions run on now ("cpu" after an auto fallback). */
  get activeDevice(): ExecutionDevice | "auto" {
    return this.device;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    const exited = new Promise<void>((resolve) => this.worker.once("exit", () => resolve()));
    let graceTimer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.call({ op: "close" }),
        new Promise((_, reject) => { graceTimer = setTimeout(() => reject(new Error("timeout")), 10_000); }),
      ]);
    } catch {
      // The thread is gone or stuck: stop it the hard way below.
    } finally {
      clearTimeout(graceTimer);
    }
    this.closed = true;
    this.failAll(new Error("inference host closed"));
    const timer = setTimeout(() => void this.worker.terminate(), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

function buffersOf(tensors: Record<string, WireTensor>): ArrayBuffer[] {
  const list: ArrayBuffer[] = [];
  for (const t of Object.values(tensors)) {
    const b = t.data.buffer;
    if (b instanceof ArrayBuffer && !list.includes(b)) list.push(b);
  }
  return list;
}
