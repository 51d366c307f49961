/** The worker's public face: start one (what main.ts, `atvp cluster up` and tests embed). */
export * from "./worker.js";
export { WORKER_NODE_FLAGS } from "./nodeFlags.js";
