/** Metrics endpoints shared by the coordinator and the workers. */
export * from "./metricsServer.js";
