/**
 * A small WebAssembly SIMD kernel for batched AES-XTS (used by sector-cipher.ts).
 *
 * OpenSSL does the AES rounds (one ECB call per batch); this kernel does the
 * part that is pure data movement in JavaScript: deriving every block's tweak
 * T_j = T_0 * alpha^j in GF(2^128) and XORing it into the data, 16 bytes per
 * instruction. The module is assembled at load time from the listing below
 * (no binary blob, no build step); `xtsKernel()` returns null when the runtime
 * has no WebAssembly SIMD, and the caller falls back to its JavaScript loop.
 *
 * Exports:
 *  - memory: scratch, laid out by the caller
 *  - tweakXor(data, t0, tweaks, sectors, blocksPerSector): for each sector s,
 *    T = t0[s]; for each block: tweaks[..] = T; data[..] ^= T; T = T * alpha
 *  - xor(dst, a, b, bytes): dst = a ^ b, bytes a multiple of 64
 */

// WebAssembly binary opcodes (core spec 5.4, SIMD proposal as standardised in Wasm 2.0).
const OP = {
  block: 0x02,
  loop: 0x03,
  end: 0x0b,
  brIf: 0x0d,
  localGet: 0x20,
  localSet: 0x21,
  localTee: 0x22,
  i32Const: 0x41,
  i32Eqz: 0x45,
  i32Add: 0x6a,
  i32Sub: 0x6b,
  simd: 0xfd,
} as const;
const SIMD = {
  load: 0x00,
  store: 0x0b,
  const: 0x0c,
  shuffle: 0x0d,
  and: 0x4e,
  xor: 0x51,
  i64x2Shl: 0xcb,
  i64x2ShrS: 0xcc,
} as const;
const I32 = 0x7f;
const V128 = 0x7b;
const VOID = 0x40;

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}

function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const simd = (op: number) => [OP.simd, ...uleb(op)];
const get = (i: number) => [OP.localGet, i];
const set = (i: number) => [OP.localSet, i];
const tee = (i: number) => [OP.localTee, i];
const i32 = (v: number) => [OP.i32Const, ...sleb(v)];
/** v128 load/store with 16-byte alignment hint and a constant offset. */
const load = (offset = 0) => [...simd(SIMD.load), 4, ...uleb(offset)];
const store = (offset = 0) => [...simd(SIMD.store), 4, ...uleb(offset)];
const addTo = (i: number, v: number) => [...get(i), ...i32(v), OP.i32Add, ...set(i)];

// x * alpha for the 128-bit little-endian value in lanes (lo, hi):
//   shifted = (lo << 1, hi << 1); masks = (lo >>s 63, hi >>s 63)
//   carries = swap(masks) & (0x87, 1)   -> hi's top bit folds 0x87 into lo, lo's top bit moves into hi
const SWAP_LANES = [8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7];
const CARRY_BITS = [0x87, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];

// tweakXor(data=0, t0=1, tweaks=2, sectors=3, blocksPerSector=4); locals: t=5 v128, j=6 i32, m=7 v128
const TWEAK_XOR_BODY = [
  OP.block, VOID,
  ...get(3), OP.i32Eqz, OP.brIf, 0,
  OP.loop, VOID,
  ...get(1), ...load(), ...set(5),
  ...addTo(1, 16),
  ...get(4), ...set(6),
  OP.loop, VOID,
  ...get(2), ...get(5), ...store(),
  ...get(0), ...get(0), ...load(), ...get(5), ...simd(SIMD.xor), ...store(),
  ...addTo(0, 16),
  ...addTo(2, 16),
  ...get(5), ...i32(1), ...simd(SIMD.i64x2Shl),
  ...get(5), ...i32(63), ...simd(SIMD.i64x2ShrS), ...tee(7), ...get(7), ...simd(SIMD.shuffle), ...SWAP_LANES,
  ...simd(SIMD.const), ...CARRY_BITS, ...simd(SIMD.and),
  ...simd(SIMD.xor), ...set(5),
  ...get(6), ...i32(1), OP.i32Sub, ...tee(6), OP.brIf, 0,
  OP.end,
  ...get(3), ...i32(1), OP.i32Sub, ...tee(3), OP.brIf, 0,
  OP.end,
  OP.end,
  OP.end,
];
const TWEAK_XOR_LOCALS = [3, 1, V128, 1, I32, 1, V128]; // 3 groups: t v128, j i32, m v128

// xor(dst=0, a=1, b=2, bytes=3), four 16-byte lanes per iteration
const XOR_STEP = (off: number) => [...get(0), ...get(1), ...load(off), ...get(2), ...load(off), ...simd(SIMD.xor), ...store(off)];
const XOR_BODY = [
  OP.block, VOID,
  ...get(3), OP.i32Eqz, OP.brIf, 0,
  OP.loop, VOID,
  ...XOR_STEP(0), ...XOR_STEP(16), ...XOR_STEP(32), ...XOR_STEP(48),
  ...addTo(0, 64), ...addTo(1, 64), ...addTo(2, 64),
  ...get(3), ...i32(64), OP.i32Sub, ...tee(3), OP.brIf, 0,
  OP.end,
  OP.end,
  OP.end,
];
const XOR_LOCALS = [0];

function section(id: number, payload: number[]): number[] {
  return [id, ...uleb(payload.length), ...payload];
}

function name(s: string): number[] {
  return [...uleb(s.length), ...Buffer.from(s, 'latin1')];
}

function body(locals: number[], code: number[]): number[] {
  const b = [...locals, ...code];
  return [...uleb(b.length), ...b];
}

/** Assembles the kernel module with `pages` 64 KiB pages of memory. */
export function assembleXtsKernel(pages: number): Uint8Array<ArrayBuffer> {
  const types = [2, 0x60, 5, I32, I32, I32, I32, I32, 0, 0x60, 4, I32, I32, I32, I32, 0];
  const funcs = [2, 0, 1];
  const memory = [1, 0x00, ...uleb(pages)];
  const exports = [3, ...name('memory'), 0x02, 0, ...name('tweakXor'), 0x00, 0, ...name('xor'), 0x00, 1];
  const code = [2, ...body(TWEAK_XOR_LOCALS, TWEAK_XOR_BODY), ...body(XOR_LOCALS, XOR_BODY)];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, types),
    ...section(3, funcs),
    ...section(5, memory),
    ...section(7, exports),
    ...section(10, code),
  ]);
}

/** An instantiated kernel with its own scratch memory. */
export interface XtsKernel {
  readonly memory: WebAssembly.Memory;
  tweakXor(data: number, t0: number, tweaks: number, sectors: number, blocksPerSector: number): void;
  xor(dst: number, a: number, b: number, bytes: number): void;
}

const moduleCache = new Map<number, WebAssembly.Module | null>();

/**
 * A fresh kernel instance with `pages` pages of memory, or null when WebAssembly SIMD is unavailable.
 *
 * @example
 * const k = xtsKernel(5); // 320 KiB scratch
 */
export function xtsKernel(pages: number): XtsKernel | null {
  let mod = moduleCache.get(pages);
  if (mod === undefined) {
    try {
      const bytes = assembleXtsKernel(pages);
      mod = WebAssembly.validate(bytes) ? new WebAssembly.Module(bytes) : null;
    } catch {
      mod = null;
    }
    moduleCache.set(pages, mod);
  }
  if (!mod) return null;
  const instance = new WebAssembly.Instance(mod, {});
  return instance.exports as unknown as XtsKernel;
}
