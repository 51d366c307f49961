/**
 * Producer/consumer maps and a topological order over one ONNX graph: the read-only index every
 * graph analysis (linears, blocks, cuts) is written against.
 */
import type { GraphProto, NodeProto, TensorProto, ValueInfoProto } from "../../../gen/onnx_pb.js";
import { GraphError } from "../errors.js";

export interface GraphIndex {
  readonly graph: GraphProto;
  readonly nodes: readonly NodeProto[];
  /** tensor name -> index of the node that produces it */
  readonly producer: ReadonlyMap<string, number>;
  /** tensor name -> indices of the nodes that consume it (each node once) */
  readonly consumers: ReadonlyMap<string, readonly number[]>;
  readonly initializers: ReadonlyMap<string, TensorProto>;
  /** graph inputs that are not initializers */
  readonly inputs: ReadonlyMap<string, ValueInfoProto>;
  /** node indices in a topological order (stable: ties keep file order) */
  readonly topoOrder: readonly number[];
  /** node index -> position in topoOrder */
  readonly topoRank: Int32Array;
}

export function indexGraph(graph: GraphProto, subject: string): GraphIndex {
  const nodes = graph.node;
  const initializers = new Map(graph.initializer.map((t) => [t.name, t] as const));
  const inputs = new Map(graph.input.filter((v) => !initializers.has(v.name)).map((v) => [v.name, v] as const));
  const producer = new Map<string, number>();
  const consumers = new Map<string, number[]>();
  nodes.forEach((node, i) => {
    for (const out of node.output) {
      if (out === "") continue;
      if (producer.has(out)) throw new GraphError(subject, `tensor ${out} is produced by two nodes (${nodes[producer.get(out)!]!.name} and ${node.name})`);
      producer.set(out, i);
    }
    for (const name of new Set(node.input)) {
      if (name === "") continue;
      let list = consumers.get(name);
      if (!list) consumers.set(name, (list = []));
      list.push(i);
    }
  });
  const topoOrder = topologicalOrder(nodes, producer, consumers, subject);
  const topoRank = new Int32Array(nodes.length);
  topoOrder.forEach((n, rank) => (topoRank[n] = rank));
  return { graph, nodes, producer, consumers, initializers, inputs, topoOrder, topoRank };
}

// Kahn's algorithm with a min-queue on file position, so already-sorted exports keep their order.
function topologicalOrder(
  nodes: readonly NodeProto[], producer: Map<string, number>, consumers: Map<string, number[]>, subject: string,
): number[] {
  const pending = new Int32Array(nodes.length);
  nodes.forEach((node, i) => {
    const deps = new Set<number>();
    for (const name of node.input) {
      const p = producer.get(name);
      if (p !== undefined && p !== i) deps.add(p);
    }
    pending[i] = deps.size;
  });
  const ready: number[] = [];
  pending.forEach((count, i) => { if (count === 0) ready.push(i); });
  const order: number[] = [];
  const heapPush = (v: number) => {
    ready.push(v);
    let i = ready.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (ready[parent]! <= v) break;
      ready[i] = ready[parent]!;
      i = parent;
    }
    ready[i] = v;
  };
  const heapPop = (): number => {
    const top = ready[0]!;
    const last = ready.pop()!;
    if (ready.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= ready.length) break;
        const r = l + 1;
        const c = r < ready.length && ready[r]! < ready[l]! ? r : l;
        if (ready[c]! >= last) break;
        ready[i] = ready[c]!;
        i = c;
      }
      ready[i] = last;
    }
    return top;
  };
  ready.sort((a, b) => a - b);
  while (ready.length > 0) {
    const n = heapPop();
    order.push(n);
    const seen = new Set<number>();
    for (const out of nodes[n]!.output) {
      for (const c of consumers.get(out) ?? []) {
        if (seen.has(c)) continue;
        seen.add(c);
        if (--pending[c]! === 0) heapPush(c);
      }
    }
  }
  if (order.length !== nodes.length) throw new GraphError(subject, "the graph has a cycle");
  return order;
}

export function attributeInt(node: NodeProto, name: string, fallback: number): number {
  const a = node.attribute.find((x) => x.name === name);
  return a ? Number(a.i) : fallback;
}

/** Display name of a node: its name, or op type and first output when exports left it empty. */
export function nodeLabel(node: NodeProto): string {
  return node.name !== "" ? node.name : `${node.opType}(${node.output[0] ?? "?"})`;
}
