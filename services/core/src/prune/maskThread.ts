/** A mask thread of a MaskPool: computes its shares of a block's masks into shared memory. */
import { parentPort } from "node:worker_threads";
import type { MaskRequest, MaskResponse, MaskTask } from "./maskProtocol.js";
import { runMaskTask, touchPages } from "./maskTask.js";

const port = parentPort!;
port.on("message", (req: MaskRequest) => {
  let res: MaskResponse;
  try {
    if (req.touch) touchPages(req.masks, req.touch.begin, req.touch.end);
    res = { id: req.id, ok: true, pruned: req.tasks.map((t: MaskTask) => runMaskTask(t, req.weights, req.masks, req.rows)) };
  } catch (err) {
    res = { id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) };
  }
  port.postMessage(res);
});
