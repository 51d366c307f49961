/**
 * Progress output: a bar on a terminal, JSON lines otherwise (so CI logs and scripts can parse
 * every event).
 */
import type { PruneEvent } from "../../core/src/index.js";

export interface ProgressSink {
  event(e: PruneEvent): void;
  done(): void;
}

export function progressSink(stream: NodeJS.WriteStream = process.stderr, jsonOut: NodeJS.WritableStream = process.stdout): ProgressSink {
  if (!stream.isTTY) {
    return { event: (e) => jsonOut.write(JSON.stringify(e) + "\n"), done: () => {} };
  }
  let total = 0;
  let done = 0;
  let label = "";
  const width = 30;
  const draw = () => {
    const filled = total === 0 ? 0 : Math.round((done / total) * width);
    stream.write(`\r[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total} blocks ${label}`.padEnd(stream.columns ? stream.columns - 1 : 80));
  };
  return {
    event(e) {
      if (e.type === "job_started") total = e.blocks;
      if (e.type === "block_started") label = e.label;
      if (e.type === "block_finished") {
        done = e.block + 1;
        label = `${e.label} ${e.seconds.toFixed(2)}s${e.cosDistAvg === null ? "" : ` cosDist ${e.cosDistAvg.toFixed(4)}`}`;
      }
      draw();
    },
    done() {
      stream.write("\n");
    },
  };
}
