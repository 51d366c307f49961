/**
 * A minimal WebAssembly binary writer: enough to build the mask kernel's module (one imported
 * memory, i32 / f64 / v128 functions, structured control flow) from TypeScript, so the kernel's
 * source is code in this repository and its bytes are produced at load time, not committed.
 */

export const I32 = 0x7f;
export const F64 = 0x7c;
export const V128 = 0x7b;
export type ValType = typeof I32 | typeof F64 | typeof V128;

/** Opcodes of the core instruction set that the kernels use. */
export const OP = {
  block: 0x02, loop: 0x03, if: 0x04, end: 0x0b, br: 0x0c, brIf: 0x0d, return: 0x0f,
  localGet: 0x20, localSet: 0x21, localTee: 0x22,
  i32Load: 0x28, f64Load: 0x2b, i32Load16U: 0x2f, i32Store: 0x36, i32Store8: 0x3a, i32Store16: 0x3b,
  i32Const: 0x41,
  i32Eqz: 0x45, i32Eq: 0x46, i32Ne: 0x47, i32LtU: 0x49, i32GtU: 0x4b, i32GeU: 0x4f,
  i32Ctz: 0x68, i32Add: 0x6a, i32Sub: 0x6b, i32Mul: 0x6c, i32And: 0x71, i32Or: 0x72, i32Shl: 0x74, i32ShrU: 0x76,
} as const;

/** SIMD opcodes (after the 0xfd prefix). */
export const SIMD = {
  load: 0, store: 11, const: 12, shuffle: 13,
  i8x16Splat: 15, i16x8Splat: 16, i32x4Splat: 17, f32x4Splat: 19, f64x2Splat: 20,
  i32x4ExtractLane: 27,
  i8x16Eq: 35, i32x4LtU: 58, i32x4GeU: 64,
  and: 78, andnot: 79, or: 80, bitselect: 82, anyTrue: 83,
  f32x4DemoteF64x2Zero: 94, f64x2PromoteLowF32x4: 95,
  i8x16Bitmask: 100, i8x16NarrowI16x8S: 101, i16x8NarrowI32x4S: 133,
  i32x4ExtendLowI16x8U: 169, i32x4ExtendHighI16x8U: 170,
  i32x4Shl: 171, i32x4ShrU: 173, i32x4Add: 174, i32x4MaxU: 185,
  f32x4Mul: 230, f64x2Mul: 242, f32x4ConvertI32x4S: 250,
} as const;

function uleb(n: number, out: number[]): void {
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
}

function sleb(n: number, out: number[]): void {
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return;
    }
    out.push(byte | 0x80);
  }
}

/** Writes one function body; locals are numbered after the parameters, in order of local(). */
export class Code {
  readonly bytes: number[] = [];
  private readonly locals: ValType[] = [];

  constructor(readonly params: readonly ValType[], readonly results: readonly ValType[]) {}

  local(type: ValType): number {
    this.locals.push(type);
    return this.params.length + this.locals.length - 1;
  }

  op(...codes: number[]): this {
    this.bytes.push(...codes);
    return this;
  }

  get(i: number): this {
    this.bytes.push(OP.localGet);
    uleb(i, this.bytes);
    return this;
  }

  set(i: number): this {
    this.bytes.push(OP.localSet);
    uleb(i, this.bytes);
    return this;
  }

  tee(i: number): this {
    this.bytes.push(OP.localTee);
    uleb(i, this.bytes);
    return this;
  }

  i32(n: number): this {
    this.bytes.push(OP.i32Const);
    sleb(n | 0, this.bytes);
    return this;
  }

  /** A load or store with its alignment (log2 bytes) and constant offset. */
  mem(opcode: number, align: number, offset = 0): this {
    this.bytes.push(opcode);
    uleb(align, this.bytes);
    uleb(offset, this.bytes);
    return this;
  }

  simd(opcode: number, ...immediates: number[]): this {
    this.bytes.push(0xfd);
    uleb(opcode, this.bytes);
    this.bytes.push(...immediates);
    return this;
  }

  /** v128.load / v128.store with an offset (alignment hint 0: rows need not be 16-aligned). */
  v128Mem(opcode: typeof SIMD.load | typeof SIMD.store, offset = 0): this {
    this.simd(opcode);
    uleb(0, this.bytes);
    uleb(offset, this.bytes);
    return this;
  }

  /** v128.const from four i32 lanes. */
  v128i32(a: number, b: number, c: number, d: number): this {
    const lanes = new Uint8Array(new Int32Array([a, b, c, d]).buffer);
    return this.simd(SIMD.const, ...lanes);
  }

  /** v128.const from sixteen i8 lanes. */
  v128i8(lanes: readonly number[]): this {
    return this.simd(SIMD.const, ...lanes.map((b) => b & 0xff));
  }

  lane(opcode: number, lane: number): this {
    return this.simd(opcode, lane);
  }

  /** Opens a block / loop / if with no result. */
  open(opcode: typeof OP.block | typeof OP.loop | typeof OP.if): this {
    return this.op(opcode, 0x40);
  }

  br(opcode: typeof OP.br | typeof OP.brIf, depth: number): this {
    this.bytes.push(opcode);
    uleb(depth, this.bytes);
    return this;
  }

  encode(): number[] {
    const out: number[] = [];
    uleb(this.locals.length, out); // one entry per local keeps the writer simple
    for (const t of this.locals) out.push(1, t);
    out.push(...this.bytes, OP.end);
    const sized: number[] = [];
    uleb(out.length, sized);
    return [...sized, ...out];
  }
}

function section(id: number, body: number[]): number[] {
  const out = [id];
  uleb(body.length, out);
  return [...out, ...body];
}

function vector(items: number[][]): number[] {
  const out: number[] = [];
  uleb(items.length, out);
  for (const i of items) out.push(...i);
  return out;
}

function name(s: string): number[] {
  const b = [...new TextEncoder().encode(s)];
  const out: number[] = [];
  uleb(b.length, out);
  return [...out, ...b];
}

/**
 * A module importing memory env.memory (at least one page; with `sharedMaxPages`, a shared memory
 * of at most that many pages, which threads can hand to each other) and exporting the given
 * functions by name.
 */
export function assembleModule(functions: ReadonlyArray<{ name: string; code: Code }>, sharedMaxPages?: number): Uint8Array {
  const types = functions.map(({ code }) => [0x60, ...vector(code.params.map((t) => [t])), ...vector(code.results.map((t) => [t]))]);
  const limits = [0x00, 0x01];
  if (sharedMaxPages !== undefined) {
    limits.splice(0, 2, 0x03, 0x01);
    uleb(sharedMaxPages, limits);
  }
  const imports = vector([[...name("env"), ...name("memory"), 0x02, ...limits]]);
  const funcs = vector(functions.map((_, i) => { const o: number[] = []; uleb(i, o); return o; }));
  const exports = vector(functions.map((f, i) => { const o = [...name(f.name), 0x00]; uleb(i, o); return o; }));
  const bodies = vector(functions.map((f) => f.code.encode()));
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vector(types)),
    ...section(2, imports),
    ...section(3, funcs),
    ...section(7, exports),
    ...section(10, bodies),
  ]);
}

// WebAssembly's types come with the DOM library, which this Node-only project does not load.
export interface WasmMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: object };
}
export const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** A module compiled from build() on first use, once per thread; null where WebAssembly lacks what it needs (SIMD). */
export function compiledOnce(build: () => Uint8Array): () => object | null {
  let compiled: object | null | undefined;
  return () => {
    if (compiled === undefined) {
      try {
        compiled = new wasm.Module(build());
      } catch {
        compiled = null;
      }
    }
    return compiled;
  };
}
