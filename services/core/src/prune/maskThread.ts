/** A mask thread of a MaskPool: computes its shares of a block's masks, from its kernel's shared memory or lent buffers into shared memory. */
import { parentPort, workerData } from "node:worker_threads";
import type { MaskRequest, MaskResponse, MaskTask } from "./maskProtocol.js";
import { runMaskTask } from "./maskTask.js";
import { useKernelMemory, type WasmMemory } from "./maskKernelWasm.js";

// The kernel works in the memory the pool writes this thread's weights into.
const memory = (workerData as { memory: WasmMemory }).memory;
useKernelMemory(memory);
const port = parentPort!;
port.on("message", (req: MaskRequest) => {
  let res: MaskResponse;
  const returned = req.tasks.flatMap((t) => (t.lent ? [t.lent] : []));
  try {
    const ms: number[] = [];
    const pruned = req.tasks.map((t: MaskTask) => {
      const start = performance.now();
      const n = runMaskTask(t, memory.buffer as SharedArrayBuffer, req.rows);
      ms.push(performance.now() - start);
      return n;
    });
    res = { id: req.id, ok: true, pruned, ms, returned };
  } catch (err) {
    res = { id: req.id, ok: false, error: err instanceof Error ? err.message : String(err), returned };
  }
  port.postMessage(res, returned);
});
