/** The coordinator's public face: start one (what main.ts, `atvp cluster up` and tests embed). */
export * from "./coordinator.js";
// `atvp plan`: the grid the shard planner would cut, without a cluster.
export * from "./gridPlan.js";
