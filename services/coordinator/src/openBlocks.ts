/**
 * Which block_started events of a job's history are still open: no later block_finished or
 * block_aborted of the same block on the same worker closes them (a rerun's block_finished on
 * another worker does not close the first start). A resumed job closes these (block_aborted),
 * since the coordinator that saw them start is gone.
 */
import type { JobEvent } from "../../gen/atvprune/v1/job_pb.js";

export interface OpenBlock {
  block: number;
  label: string;
  worker: string;
}

export function openBlockStarts(events: Iterable<JobEvent>): OpenBlock[] {
  let open: OpenBlock[] = [];
  for (const e of events) {
    const ev = e.event;
    if (ev.case === "blockStarted") open.push({ block: ev.value.block, label: ev.value.label, worker: ev.value.worker });
    if (ev.case === "blockFinished" || ev.case === "blockAborted") {
      const { block, worker } = ev.value;
      open = open.filter((o) => !(o.block === block && o.worker === worker));
    }
  }
  return open;
}
