/**
 * What replicas exchange per sample and block (pipeline/sampleExchange.ts), in bytes: the
 * planners size the replicas' memory and links from it.
 */
import type { LinearInfo } from "../graph/linears.js";
import { HessianAccumulator } from "../prune/hessian.js";

/** The block's distinct input activations and their widths (linears reading one share it). */
function inputs(linears: readonly LinearInfo[]): number[] {
  return [...new Map(linears.map((l) => [l.activation, l.inDim])).values()];
}

/** A sum of squares per channel of every distinct input (Wanda, ATV). */
export function channelRecordBytes(linears: readonly LinearInfo[]): number {
  return 8 * inputs(linears).reduce((a, n) => a + n, 0);
}

/** A sum of squares per channel for every linear (TAMP's AMIA subsets differ per linear). */
export function perLinearRecordBytes(linears: readonly LinearInfo[]): number {
  return 8 * linears.reduce((a, l) => a + l.inDim, 0);
}

/** ATV's pool observation: one cosine distance per token. */
export function distanceRecordBytes(tokensPerSample: number): number {
  return 8 * tokensPerSample;
}

/** The upper triangle of the sample's own AᵀA for every distinct input (SparseGPT). */
export function hessianRecordBytes(linears: readonly LinearInfo[]): number {
  return 8 * inputs(linears).reduce((a, n) => a + HessianAccumulator.recordLength(n), 0);
}
