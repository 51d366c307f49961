/** One figure a benchmark reports; run.ts prints each as a JSON line. Extra keys give context. */
export interface BenchLine {
  bench: string;
  value: number;
  unit: string;
  [k: string]: unknown;
}
