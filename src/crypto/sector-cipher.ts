/**
 * Sector ciphers: encrypt/decrypt runs of sectors in place, as dm-crypt does.
 *
 * IV numbers are in 512-byte units: sector i of a run starting at `firstIv` uses
 * IV number `firstIv + i * sectorSize / 512` (cryptsetup's LUKS2 default, no
 * iv_large_sectors). IV generators (dm-crypt, drivers/md/dm-crypt.c):
 *  - plain:   u32LE(n mod 2^32) padded with zeros to 16 bytes
 *  - plain64: u64LE(n) padded with zeros
 *  - essiv:H: AES-ECB_{H(key)}(u64LE(n) || 0^8)
 *  - null:    all zeros
 *
 * AES-XTS (IEEE 1619-2007) is the product's hot path, so it is batched instead of
 * calling OpenSSL once per sector: every sector's initial tweak T0 = AES_{K2}(IV)
 * comes from one ECB call over all IV blocks; block j's tweak is T0 * alpha^j in
 * GF(2^128) (little-endian, x^128 + x^7 + x^2 + x + 1, hence 0x87); the data is
 * XORed with the tweaks, run through one AES-ECB_{K1} call, and XORed again.
 * Sector sizes are multiples of 16, so ciphertext stealing never occurs. The
 * tweak derivation and XORs run in a small WebAssembly SIMD kernel (xts-wasm.ts)
 * when the runtime has one, else in a JavaScript loop over Uint32 views; both
 * need a little-endian host (elsewhere XTS falls back to one OpenSSL call per sector).
 *
 * The functions `encryptSectors`/`decryptSectors` take only plain values
 * (spec, key bytes, sector size, data), so they can run in a worker thread.
 */
import { createCipheriv, createDecipheriv, type Cipher, type Decipher } from 'node:crypto';
import { endianness } from 'node:os';
import { InvalidArgumentError, UnsupportedCipherError, WeakKeyError } from '../errors.js';
import { cipherSpecStrings, validateKeyBytes, type CipherSpec } from './cipher-spec.js';
import { digest } from './hash.js';
import { xtsKernel, type XtsKernel } from './xts-wasm.js';
import { NATIVE_IV_MODES, NativeXtsKeys, xtsNative, type NativeIvMode } from './xts-native.js';

/** A keyed sector cipher. All methods are synchronous and work in place. */
export interface SectorCipher {
  /** Bytes per sector: 512..4096, a power of two. */
  readonly sectorSize: number;
  /** Encrypts whole sectors in place; `data.length % sectorSize == 0`; IV numbers in 512-byte units. */
  encrypt(data: Uint8Array, firstIv: number): void;
  /** Decrypts whole sectors in place (see `encrypt`). */
  decrypt(data: Uint8Array, firstIv: number): void;
  /** Drops the key schedule references and zeroes the key copy held here. */
  wipe(): void;
}

/** Which implementation does the XTS tweak arithmetic (tests and benchmarks pin one). */
export interface SectorCipherOptions {
  /**
   * 'auto' (default): the native kernel when it is built (xts-native.ts) and the IV generator
   * is one it computes (plain64, plain, null), else WebAssembly SIMD, else JavaScript.
   * 'native-evp' pins the native kernel's OpenSSL engine (no AES-NI code of ours).
   */
  xtsKernel?: 'auto' | 'native' | 'native-evp' | 'wasm' | 'js';
}

/**
 * Bytes processed per OpenSSL call: large enough to amortise the per-call cost (a new output
 * buffer each time), small enough to keep the XTS scratch (4 x this) in L2. 128 KiB measured
 * ~15% faster than 64 KiB, 256 KiB no better.
 */
const CHUNK_BYTES = 128 * 1024;
/** CBC encryption: runs of at least this many sectors use the transposed ECB path. */
const CBC_TRANSPOSE_MIN_SECTORS = 32;
/** CBC encryption: bytes per transposed chunk (block j of every sector goes through one ECB call). */
const CBC_TRANSPOSE_BYTES = 256 * 1024;
const TWO_POW_32 = 4294967296;
const LITTLE_ENDIAN = endianness() === 'LE';

/** Size of the one-off cipher call that tunes the C allocator (see `primeAllocator`). */
const ALLOCATOR_PRIME_BYTES = 4 << 20;
let allocatorPrimed = false;

/**
 * Node's `Cipher.update` returns every result in a freshly allocated buffer. With glibc's
 * default thresholds (malloc(3), M_MMAP_THRESHOLD / M_TRIM_THRESHOLD: 128 KiB), those buffers
 * come from memory the allocator has just returned to the kernel, so each call pays page
 * faults for its output - more than the AES itself costs. glibc raises both thresholds when
 * a large mmap-allocated block is freed, and `update` frees its oversized scratch output
 * before returning: one large call per thread (module state is per thread) makes later
 * outputs reuse heap pages. Harmless where the allocator behaves differently.
 */
function primeAllocator(): void {
  if (allocatorPrimed) return;
  allocatorPrimed = true;
  const c = createCipheriv('aes-128-ecb', new Uint8Array(16), null).setAutoPadding(false);
  c.update(new Uint8Array(ALLOCATOR_PRIME_BYTES));
}

function ecbName(keyLength: number): string {
  return `aes-${keyLength * 8}-ecb`;
}

function ecbCipher(key: Uint8Array): Cipher {
  return createCipheriv(ecbName(key.length), key, null).setAutoPadding(false);
}

function ecbDecipher(key: Uint8Array): Decipher {
  return createDecipheriv(ecbName(key.length), key, null).setAutoPadding(false);
}

function u32(bytes: Uint8Array): Uint32Array {
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
}

/** A 4-byte aligned copy of `bytes` when its offset does not allow a Uint32Array view. */
function aligned(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset % 4 === 0 ? bytes : new Uint8Array(bytes);
}

function checkSectorSize(sectorSize: number): void {
  if (!Number.isInteger(sectorSize) || sectorSize < 512 || sectorSize > 4096 || (sectorSize & (sectorSize - 1)) !== 0) {
    throw new InvalidArgumentError(`Sector size ${sectorSize} is not a power of two between 512 and 4096.`);
  }
}

function checkRun(data: Uint8Array, firstIv: number, sectorSize: number): number {
  if (data.length % sectorSize !== 0) {
    throw new InvalidArgumentError(`Data length ${data.length} is not a multiple of the sector size ${sectorSize}.`);
  }
  const sectors = data.length / sectorSize;
  const last = firstIv + Math.max(0, sectors - 1) * (sectorSize / 512);
  if (!Number.isSafeInteger(firstIv) || firstIv < 0 || !Number.isSafeInteger(last)) {
    throw new InvalidArgumentError(`IV number ${firstIv} is not a non-negative integer below 2^53 for this run.`);
  }
  return sectors;
}

/**
 * IV generator bound to a key: fills `count` 16-byte IV blocks for IV numbers
 * firstIv, firstIv + step, ... (exact up to 2^53).
 */
class IvSource {
  readonly #gen: CipherSpec['ivGen'];
  #essiv: Cipher | null = null;

  constructor(spec: CipherSpec, key: Uint8Array) {
    this.#gen = spec.ivGen;
    if (spec.ivGen === 'essiv') {
      // ESSIV salt = H(volume key), used as an AES key of the hash's length.
      const salt = digest(spec.ivHash ?? 'sha256', key);
      this.#essiv = ecbCipher(salt);
      salt.fill(0);
    }
  }

  blocks(firstIv: number, count: number, step: number): Uint8Array {
    const out = new Uint8Array(count * 16);
    if (this.#gen === 'null') return out;
    const view = new DataView(out.buffer);
    let hi = Math.floor(firstIv / TWO_POW_32);
    let lo = firstIv - hi * TWO_POW_32;
    const wide = this.#gen !== 'plain';
    for (let i = 0, o = 0; i < count; i++, o += 16) {
      view.setUint32(o, lo, true);
      if (wide) view.setUint32(o + 4, hi, true);
      lo += step;
      if (lo >= TWO_POW_32) {
        lo -= TWO_POW_32;
        hi++;
      }
    }
    if (this.#essiv) {
      const enc = this.#essiv.update(out);
      out.set(enc);
      enc.fill(0);
    }
    return out;
  }

  wipe(): void {
    this.#essiv = null;
  }
}

/** XTS over whole batches (see module comment). Requires a little-endian host. */
class BatchedXts implements SectorCipher {
  readonly sectorSize: number;
  #k1enc: Cipher | null;
  #k1dec: Decipher | null;
  #k2: Cipher | null;
  #iv: IvSource;
  readonly #tweaks: Uint32Array;
  #wasm: XtsKernel | null;

  constructor(spec: CipherSpec, key: Uint8Array, sectorSize: number, kernel: 'auto' | 'wasm' | 'js') {
    this.sectorSize = sectorSize;
    primeAllocator();
    // WASM scratch layout: data [0, C), tweaks [C, 2C), ECB output [2C, 3C), T0 blocks [3C, 3C + C/32).
    this.#wasm = kernel === 'js' ? null : xtsKernel((4 * CHUNK_BYTES) / 65536);
    if (kernel === 'wasm' && !this.#wasm) throw new UnsupportedCipherError('aes-xts', 'needs WebAssembly SIMD for the requested kernel');
    this.#tweaks = new Uint32Array(this.#wasm ? 0 : CHUNK_BYTES / 4);
    const half = key.length / 2;
    const k1 = key.subarray(0, half);
    const k2 = key.subarray(half);
    this.#k1enc = ecbCipher(k1);
    this.#k1dec = ecbDecipher(k1);
    this.#k2 = ecbCipher(k2);
    this.#iv = new IvSource(spec, key);
  }

  encrypt(data: Uint8Array, firstIv: number): void {
    this.#run(data, firstIv, true);
  }

  decrypt(data: Uint8Array, firstIv: number): void {
    this.#run(data, firstIv, false);
  }

  #run(data: Uint8Array, firstIv: number, forward: boolean): void {
    const sectors = checkRun(data, firstIv, this.sectorSize);
    const k1 = forward ? this.#k1enc : this.#k1dec;
    if (!k1 || !this.#k2) throw new InvalidArgumentError('Sector cipher was wiped.');
    const step = this.sectorSize / 512;
    const perChunk = Math.max(1, CHUNK_BYTES / this.sectorSize);
    for (let s = 0; s < sectors; s += perChunk) {
      const n = Math.min(perChunk, sectors - s);
      const part = data.subarray(s * this.sectorSize, (s + n) * this.sectorSize);
      if (this.#wasm) {
        this.#chunkWasm(this.#wasm, part, n, firstIv + s * step, step, k1, this.#k2);
        continue;
      }
      const work = aligned(part);
      this.#chunk(work, n, firstIv + s * step, step, k1, this.#k2);
      if (work !== part) {
        part.set(work);
        work.fill(0);
      }
    }
  }

  #chunkWasm(w: XtsKernel, bytes: Uint8Array, sectors: number, firstIv: number, step: number, k1: Cipher | Decipher, k2: Cipher): void {
    const mem = new Uint8Array(w.memory.buffer);
    const len = bytes.length;
    const D = 0;
    const TW = CHUNK_BYTES;
    const O = 2 * CHUNK_BYTES;
    const T0 = 3 * CHUNK_BYTES;
    mem.set(bytes, D);
    mem.set(k2.update(this.#iv.blocks(firstIv, sectors, step)), T0);
    w.tweakXor(D, T0, TW, sectors, this.sectorSize >>> 4);
    const out = k1.update(mem.subarray(D, D + len));
    mem.set(out, O);
    out.fill(0);
    w.xor(D, O, TW, len);
    bytes.set(mem.subarray(D, D + len));
  }

  #chunk(bytes: Uint8Array, sectors: number, firstIv: number, step: number, k1: Cipher | Decipher, k2: Cipher): void {
    const ivs = this.#iv.blocks(firstIv, sectors, step);
    const t0 = u32(aligned(k2.update(ivs)));
    const d = u32(bytes);
    const tw = this.#tweaks;
    const blocksPerSector = this.sectorSize >>> 4;
    let p = 0;
    for (let s = 0; s < sectors; s++) {
      let a = t0[4 * s] | 0;
      let b = t0[4 * s + 1] | 0;
      let c = t0[4 * s + 2] | 0;
      let e = t0[4 * s + 3] | 0;
      for (let j = 0; j < blocksPerSector; j++, p += 4) {
        tw[p] = a;
        tw[p + 1] = b;
        tw[p + 2] = c;
        tw[p + 3] = e;
        d[p] ^= a;
        d[p + 1] ^= b;
        d[p + 2] ^= c;
        d[p + 3] ^= e;
        // Multiply by alpha: shift the 128-bit little-endian value left by one,
        // folding the carry out of bit 127 back in as 0x87.
        const carry = (e >> 31) & 0x87;
        e = (e << 1) | (c >>> 31);
        c = (c << 1) | (b >>> 31);
        b = (b << 1) | (a >>> 31);
        a = (a << 1) ^ carry;
      }
    }
    const outBuf = k1.update(bytes);
    const out = u32(aligned(outBuf));
    const words = d.length;
    for (let i = 0; i < words; i++) d[i] = out[i] ^ tw[i];
    outBuf.fill(0);
  }

  wipe(): void {
    this.#k1enc = null;
    this.#k1dec = null;
    this.#k2 = null;
    this.#iv.wipe();
    this.#tweaks.fill(0);
    if (this.#wasm) new Uint8Array(this.#wasm.memory.buffer).fill(0);
    this.#wasm = null;
  }
}

/** XTS in the native kernel (AES-NI or OpenSSL EVP engine), in place (xts-native.ts). */
class NativeXts implements SectorCipher {
  readonly sectorSize: number;
  readonly #keys: NativeXtsKeys;

  constructor(keys: NativeXtsKeys, sectorSize: number) {
    this.sectorSize = sectorSize;
    this.#keys = keys;
  }

  encrypt(data: Uint8Array, firstIv: number): void {
    checkRun(data, firstIv, this.sectorSize);
    this.#keys.run(data, firstIv, this.sectorSize, true);
  }

  decrypt(data: Uint8Array, firstIv: number): void {
    checkRun(data, firstIv, this.sectorSize);
    this.#keys.run(data, firstIv, this.sectorSize, false);
  }

  wipe(): void {
    this.#keys.wipe();
  }
}

/** Per-sector OpenSSL AES-XTS: used on big-endian hosts, where the word tricks above do not hold. */
class PerSectorXts implements SectorCipher {
  readonly sectorSize: number;
  #key: Uint8Array | null;
  #iv: IvSource;
  readonly #name: string;

  constructor(spec: CipherSpec, key: Uint8Array, sectorSize: number) {
    this.sectorSize = sectorSize;
    this.#key = new Uint8Array(key);
    this.#iv = new IvSource(spec, key);
    this.#name = `aes-${key.length * 4}-xts`;
  }

  encrypt(data: Uint8Array, firstIv: number): void {
    this.#run(data, firstIv, true);
  }

  decrypt(data: Uint8Array, firstIv: number): void {
    this.#run(data, firstIv, false);
  }

  #run(data: Uint8Array, firstIv: number, forward: boolean): void {
    const sectors = checkRun(data, firstIv, this.sectorSize);
    const key = this.#key;
    if (!key) throw new InvalidArgumentError('Sector cipher was wiped.');
    const ivs = this.#iv.blocks(firstIv, sectors, this.sectorSize / 512);
    for (let s = 0; s < sectors; s++) {
      const iv = ivs.subarray(s * 16, s * 16 + 16);
      const c = forward ? createCipheriv(this.#name, key, iv) : createDecipheriv(this.#name, key, iv);
      const sector = data.subarray(s * this.sectorSize, (s + 1) * this.sectorSize);
      sector.set(c.update(sector));
    }
  }

  wipe(): void {
    this.#key?.fill(0);
    this.#key = null;
    this.#iv.wipe();
  }
}

/**
 * AES-CBC. Decryption is batched: P_j = D(C_j) xor C_{j-1} (C_{-1} = IV), one ECB
 * call per chunk. Encryption chains inside a sector, so a long run is processed
 * "transposed": block j of every sector in the chunk goes through one ECB call
 * (sectors are independent), which beats one OpenSSL CBC call per sector once
 * there are enough sectors; short runs use one CBC call per sector.
 */
class Cbc implements SectorCipher {
  readonly sectorSize: number;
  #key: Uint8Array | null;
  #enc: Cipher | null;
  #dec: Decipher | null;
  #iv: IvSource;
  readonly #name: string;

  constructor(spec: CipherSpec, key: Uint8Array, sectorSize: number) {
    this.sectorSize = sectorSize;
    primeAllocator();
    this.#key = new Uint8Array(key);
    this.#enc = ecbCipher(key);
    this.#dec = ecbDecipher(key);
    this.#iv = new IvSource(spec, key);
    this.#name = `aes-${key.length * 8}-cbc`;
  }

  encrypt(data: Uint8Array, firstIv: number): void {
    const sectors = checkRun(data, firstIv, this.sectorSize);
    const key = this.#key;
    const enc = this.#enc;
    if (!key || !enc) throw new InvalidArgumentError('Sector cipher was wiped.');
    const step = this.sectorSize / 512;
    if (sectors < CBC_TRANSPOSE_MIN_SECTORS) {
      const ivs = this.#iv.blocks(firstIv, sectors, step);
      for (let s = 0; s < sectors; s++) {
        const c = createCipheriv(this.#name, key, ivs.subarray(s * 16, s * 16 + 16)).setAutoPadding(false);
        const sector = data.subarray(s * this.sectorSize, (s + 1) * this.sectorSize);
        sector.set(c.update(sector));
      }
      return;
    }
    const perChunk = Math.max(1, CBC_TRANSPOSE_BYTES / this.sectorSize);
    const sectorWords = this.sectorSize >>> 2;
    const blocks = this.sectorSize >>> 4;
    for (let s = 0; s < sectors; s += perChunk) {
      const n = Math.min(perChunk, sectors - s);
      const part = data.subarray(s * this.sectorSize, (s + n) * this.sectorSize);
      const work = aligned(part);
      const d = u32(work);
      let prev = u32(this.#iv.blocks(firstIv + s * step, n, step));
      const x = new Uint32Array(n * 4);
      const xBytes = new Uint8Array(x.buffer);
      for (let j = 0; j < blocks; j++) {
        for (let sec = 0, b = j * 4; sec < n; sec++, b += sectorWords) {
          const q = sec * 4;
          x[q] = d[b]! ^ prev[q]!;
          x[q + 1] = d[b + 1]! ^ prev[q + 1]!;
          x[q + 2] = d[b + 2]! ^ prev[q + 2]!;
          x[q + 3] = d[b + 3]! ^ prev[q + 3]!;
        }
        const e = u32(aligned(enc.update(xBytes)));
        for (let sec = 0, b = j * 4; sec < n; sec++, b += sectorWords) {
          const q = sec * 4;
          d[b] = e[q]!;
          d[b + 1] = e[q + 1]!;
          d[b + 2] = e[q + 2]!;
          d[b + 3] = e[q + 3]!;
        }
        prev = e;
      }
      x.fill(0);
      if (work !== part) {
        part.set(work);
        work.fill(0);
      }
    }
  }

  decrypt(data: Uint8Array, firstIv: number): void {
    const sectors = checkRun(data, firstIv, this.sectorSize);
    const dec = this.#dec;
    if (!dec) throw new InvalidArgumentError('Sector cipher was wiped.');
    const step = this.sectorSize / 512;
    const perChunk = Math.max(1, CHUNK_BYTES / this.sectorSize);
    const sectorWords = this.sectorSize >>> 2;
    for (let s = 0; s < sectors; s += perChunk) {
      const n = Math.min(perChunk, sectors - s);
      const part = data.subarray(s * this.sectorSize, (s + n) * this.sectorSize);
      const work = aligned(part);
      const iv = u32(this.#iv.blocks(firstIv + s * step, n, step));
      const plainBuf = dec.update(work);
      const plain = u32(aligned(plainBuf));
      const c = u32(work);
      // Walk backwards so each C_{j-1} is still ciphertext when it is used.
      for (let sec = 0; sec < n; sec++) {
        const base = sec * sectorWords;
        for (let w = sectorWords - 1; w >= 4; w--) c[base + w] = plain[base + w]! ^ c[base + w - 4]!;
        for (let w = 0; w < 4; w++) c[base + w] = plain[base + w]! ^ iv[sec * 4 + w]!;
      }
      plainBuf.fill(0);
      if (work !== part) {
        part.set(work);
        work.fill(0);
      }
    }
  }

  wipe(): void {
    this.#key?.fill(0);
    this.#key = null;
    this.#enc = null;
    this.#dec = null;
    this.#iv.wipe();
  }
}

/** AES-ECB: no IV, every block independent, one OpenSSL call per run. */
class Ecb implements SectorCipher {
  readonly sectorSize: number;
  #enc: Cipher | null;
  #dec: Decipher | null;

  constructor(key: Uint8Array, sectorSize: number) {
    this.sectorSize = sectorSize;
    this.#enc = ecbCipher(key);
    this.#dec = ecbDecipher(key);
  }

  encrypt(data: Uint8Array, firstIv: number): void {
    checkRun(data, firstIv, this.sectorSize);
    if (!this.#enc) throw new InvalidArgumentError('Sector cipher was wiped.');
    this.#apply(data, this.#enc);
  }

  decrypt(data: Uint8Array, firstIv: number): void {
    checkRun(data, firstIv, this.sectorSize);
    if (!this.#dec) throw new InvalidArgumentError('Sector cipher was wiped.');
    this.#apply(data, this.#dec);
  }

  #apply(data: Uint8Array, c: Cipher | Decipher): void {
    for (let off = 0; off < data.length; off += CHUNK_BYTES) {
      const part = data.subarray(off, Math.min(data.length, off + CHUNK_BYTES));
      const out = c.update(part);
      part.set(out);
      out.fill(0);
    }
  }

  wipe(): void {
    this.#enc = null;
    this.#dec = null;
  }
}

function halvesEqual(key: Uint8Array): boolean {
  const half = key.length / 2;
  let diff = 0;
  for (let i = 0; i < half; i++) diff |= key[i]! ^ key[i + half]!;
  return diff === 0;
}

/**
 * Creates a sector cipher for `spec` keyed with `key` (the volume key).
 * The key bytes are copied or consumed into OpenSSL key schedules; the caller may wipe its copy.
 *
 * @example
 * const c = createSectorCipher(parseEncryption('aes-xts-plain64'), key64, 4096);
 * c.encrypt(buf, 0); // buf.length % 4096 == 0; sector i uses IV 8*i
 * c.wipe();
 * @throws UnsupportedCipherError for an unsupported spec or key length,
 *   WeakKeyError for an XTS key whose two halves are equal, InvalidArgumentError for a bad sector size.
 */
export function createSectorCipher(spec: CipherSpec, key: Uint8Array, sectorSize: number, options: SectorCipherOptions = {}): SectorCipher {
  checkSectorSize(sectorSize);
  if (spec.cipher !== 'aes') throw new UnsupportedCipherError(cipherSpecStrings(spec).encryption);
  validateKeyBytes(spec, key.length);
  if (spec.keyBytes !== undefined && spec.keyBytes !== key.length) {
    throw new InvalidArgumentError(`Key is ${key.length} bytes but the cipher specification says ${spec.keyBytes}.`);
  }
  switch (spec.mode) {
    case 'xts':
      // IEEE 1619-2007 5.1 / OpenSSL: Key1 must differ from Key2.
      if (halvesEqual(key)) throw new WeakKeyError('AES-XTS key halves are equal.');
      return xtsCipher(spec, key, sectorSize, options.xtsKernel ?? 'auto');
    case 'cbc':
      return new Cbc(spec, key, sectorSize);
    case 'ecb':
      return new Ecb(key, sectorSize);
    default:
      throw new UnsupportedCipherError(cipherSpecStrings(spec).encryption);
  }
}

function xtsCipher(spec: CipherSpec, key: Uint8Array, sectorSize: number, kernel: NonNullable<SectorCipherOptions['xtsKernel']>): SectorCipher {
  if (kernel === 'auto' || kernel === 'native' || kernel === 'native-evp') {
    const mod = xtsNative();
    const ivMode = spec.ivGen in NATIVE_IV_MODES ? (spec.ivGen as NativeIvMode) : undefined;
    if (mod && ivMode) return new NativeXts(new NativeXtsKeys(mod, key, ivMode, kernel === 'native-evp' ? 'evp' : 'auto'), sectorSize);
    if (kernel !== 'auto') {
      throw new UnsupportedCipherError(
        cipherSpecStrings(spec).encryption,
        mod ? `has no native kernel for ${spec.ivGen} IVs` : 'needs the native AES-XTS kernel, which is not built (scripts/build-native.mjs)',
      );
    }
    kernel = 'auto';
  }
  return LITTLE_ENDIAN ? new BatchedXts(spec, key, sectorSize, kernel) : new PerSectorXts(spec, key, sectorSize);
}

/**
 * Per-sector OpenSSL XTS regardless of host endianness: slow, kept as a
 * cross-check for the batched implementation and for benchmarks.
 */
export function createPerSectorXtsCipher(spec: CipherSpec, key: Uint8Array, sectorSize: number): SectorCipher {
  checkSectorSize(sectorSize);
  if (spec.mode !== 'xts') throw new InvalidArgumentError('Per-sector XTS cipher needs an XTS specification.');
  validateKeyBytes(spec, key.length);
  if (halvesEqual(key)) throw new WeakKeyError('AES-XTS key halves are equal.');
  return new PerSectorXts(spec, key, sectorSize);
}

/**
 * Encrypts `data` in place with a one-off cipher; plain arguments only, so it can run
 * in a worker thread (pass `data` and `key` as transferable/shared buffers).
 *
 * @example
 * encryptSectors(parseEncryption('aes-xts-plain64'), key, 512, data, 2048);
 */
export function encryptSectors(spec: CipherSpec, key: Uint8Array, sectorSize: number, data: Uint8Array, firstIv: number): void {
  const c = createSectorCipher(spec, key, sectorSize);
  try {
    c.encrypt(data, firstIv);
  } finally {
    c.wipe();
  }
}

/** Decrypts `data` in place with a one-off cipher (see `encryptSectors`). */
export function decryptSectors(spec: CipherSpec, key: Uint8Array, sectorSize: number, data: Uint8Array, firstIv: number): void {
  const c = createSectorCipher(spec, key, sectorSize);
  try {
    c.decrypt(data, firstIv);
  } finally {
    c.wipe();
  }
}
