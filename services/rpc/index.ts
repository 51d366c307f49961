/**
 * The wire edge shared by the coordinator, the workers and the CLI: gRPC plumbing (adapter,
 * credentials, bearer tokens, peer names, health), statuses, the request path policy, and the
 * conversions between proto messages and the engine's plain types.
 */
export * from "./bearerAuth.js";
export * from "./blockReportWire.js";
export * from "./credentials.js";
export * from "./grpcAdapter.js";
export * from "./health.js";
export * from "./jobPlanWire.js";
export * from "./jobSpec.js";
export * from "./pathPolicy.js";
export * from "./peerNames.js";
export * from "./status.js";
export * from "./tokenFile.js";
