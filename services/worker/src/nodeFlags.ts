/**
 * Node options a worker process runs with, wherever it is started (the worker image's
 * ENTRYPOINT, `atvp cluster up`, the benchmarks). V8 reads heap sizes only when the process
 * starts, so they cannot be set from inside the worker.
 *
 * --initial-old-space-size: a worker's JavaScript heap is small (~20 MB) while each block turns
 * over tens of MB of activations and masks in array buffers; with V8's limits for a heap that
 * small, it ran ~3.6 full collections per block of the medium generated model (--trace-gc), and
 * their marking threads take CPU from onnxruntime when every core is busy, as it is when the
 * replicas of a stage share a machine. With 256 MB of old space to start from it ran about half
 * as many, and 2 replicas on this 2-core machine pruned the model 5-8% faster (alternating runs).
 * It sizes limits, not memory: nothing is allocated up front.
 */
export const WORKER_NODE_FLAGS: readonly string[] = ["--initial-old-space-size=256"];
