/** A mask thread of a MaskPool: computes its shares of a block's masks, from its kernel's shared memory into shared memory. */
import { parentPort, workerData } from "node:worker_threads";
import type { MaskRequest, MaskResponse, MaskTask } from "./maskProtocol.js";
import { runMaskTask, touchPages } from "./maskTask.js";
import { useKernelMemory, type WasmMemory } from "./maskKernelWasm.js";

// The kernel works in the memory the pool writes this thread's weights into.
const memory = (workerData as { memory: WasmMemory }).memory;
useKernelMemory(memory);
const port = parentPort!;
port.on("message", (req: MaskRequest) => {
  let res: MaskResponse;
  try {
    if (req.touch) touchPages(req.masks, req.touch.begin, req.touch.end);
    const pruned = req.tasks.map((t: MaskTask) => runMaskTask(t, memory.buffer as SharedArrayBuffer, req.masks, req.rows));
    res = req.spare === undefined ? { id: req.id, ok: true, pruned } : { id: req.id, ok: true, pruned, spare: new SharedArrayBuffer(req.spare) };
  } catch (err) {
    res = { id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) };
  }
  port.postMessage(res);
});
