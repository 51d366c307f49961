/** The coordinator's public face: start one (what main.ts, `atvp cluster up` and tests embed). */
export * from "./coordinator.js";
