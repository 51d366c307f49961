/**
 * One WATCH request of the Kubernetes API as a promise: resolves when the server ends it (or
 * stop() is called), rejects when it fails or `onEvent` throws. A watch whose connection died
 * without a FIN never ends by itself, so past `deadManMs` it is rejected as presumed dead.
 */
import { Watch, type KubeConfig } from "@kubernetes/client-node";
import { KubeApiError } from "./errors.js";

export interface WatchStream {
  done: Promise<void>;
  stop(): void;
}

export function watchStream(
  kubeConfig: KubeConfig, path: string, query: Record<string, string | number | boolean | undefined>,
  onEvent: (type: string, object: unknown) => void, deadMan?: { ms: number; subject: string; message: string },
): WatchStream {
  let stop = () => {};
  const done = new Promise<void>((resolve, reject) => {
    let controller: AbortController | undefined;
    let settled = false;
    const finish = (err?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(watchdog);
      controller?.abort();
      if (err) reject(err);
      else resolve();
    };
    const watchdog = deadMan ? setTimeout(() => finish(new KubeApiError(deadMan.subject, deadMan.message)), deadMan.ms) : undefined;
    stop = () => finish();
    new Watch(kubeConfig).watch(path, query, (type, object) => {
      if (settled) return;
      try {
        onEvent(type, object);
      } catch (err) {
        finish(err);
      }
    }, (err) => finish(err)).then((c) => {
      controller = c;
      if (settled) c.abort();
    }, (err: unknown) => finish(err));
  });
  return { done, stop: () => stop() };
}

/**
 * Waits for `watch` to end, handing its stop function to `setStop` meanwhile (close() calls it);
 * a failure once `closed()` is true is the close itself, not an error.
 */
export async function untilWatchEnds(watch: WatchStream, setStop: (stop: (() => void) | undefined) => void, closed: () => boolean): Promise<void> {
  setStop(() => watch.stop());
  try {
    await watch.done;
  } catch (err) {
    if (!closed()) throw err;
  } finally {
    setStop(undefined);
  }
}
