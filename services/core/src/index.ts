/**
 * The engine's public face: what the coordinator, the workers, the RPC layer and the CLI may
 * use. Other packages import this file, never a module deeper in services/core.
 */
export * from "./calib/build/buildCalib.js";
export * from "./calib/calibSet.js";
export * from "./errors.js";
export * from "./eval/evaluate.js";
export * from "./eval/htmlReport.js";
export * from "./gen/genModel.js";
export * from "./gen/vlm/vlmFolder.js";
export * from "./io/fsErrors.js";
export * from "./io/syncDir.js";
export * from "./methods/index.js";
export * from "./modelDir/modelFolder.js";
export * from "./modelDir/pruneFolder.js";
export * from "./onnx/dtype.js";
export * from "./onnx/modelFile.js";
export * from "./onnx/modelWriter.js";
export * from "./onnx/outputDir.js";
export * from "./onnx/outputLock.js";
export * from "./onnx/partialData.js";
export * from "./onnx/tensorData.js";
export * from "./pipeline/blockEngine.js";
export * from "./pipeline/modelAnalysis.js";
export * from "./pipeline/pruneModel.js";
export * from "./pipeline/profilePhase.js";
export * from "./pipeline/pruneSpec.js";
export * from "./pipeline/report.js";
export * from "./pipeline/sampleFeeds.js";
export * from "./pipeline/sampleExchange.js";
export * from "./pipeline/localExchange.js";
export * from "./plan/costCalibration.js";
export * from "./plan/costTable.js";
export * from "./plan/defaultCostTable.js";
export * from "./plan/jobPlan.js";
export * from "./plan/modelShape.js";
export * from "./profiles/index.js";
export * from "./runtime/inferenceHost.js";
export { clampThreads } from "./runtime/threadLimit.js";
// Its TensorData (a typed array) is not onnx/tensorData's TensorData (the weights reader).
export { elementCount, type WireTensor, type TensorData as WireTensorData } from "./runtime/wireTensor.js";
export { MaskPool, type MaskJob } from "./prune/maskPool.js";
export { SolvePool, INLINE_SOLVER, type Solver } from "./prune/solvePool.js";
