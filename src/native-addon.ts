/**
 * The optional native module (native/*.c, built by scripts/build-native.mjs into
 * build/Release/brickcrypt_xts.node): the AES-XTS kernel (see crypto/xts-native.ts), a
 * plain memory copy and aligned memory for O_DIRECT. Everything it offers has a slower
 * portable fallback, so a missing or broken build only costs speed; `nativeAddonError()` says
 * why it did not load.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** What the compiled module exports (native/xts.c, native/copy-bytes.c, native/align.c, native/seek-data.c, native/syncfs.c, native/af-chain.c, native/block-digests.c). */
export interface NativeAddon {
  /** engine 0: AES-NI when the CPU has it, else OpenSSL EVP; 1: OpenSSL EVP only. */
  createKeys(key: Uint8Array, engine: number): object;
  engine(keys: object): 'aesni' | 'evp';
  run(keys: object, data: Uint8Array, firstIv: number, sectorSize: number, ivStep: number, ivMode: number, encrypt: boolean): void;
  wipe(keys: object): void;
  copyBytes(dst: Uint8Array, dstOffset: number, src: Uint8Array): void;
  alignGap(view: Uint8Array, alignment: number): number;
  /** lseek SEEK_HOLE (`hole`) or SEEK_DATA: the offset, -1 for ENXIO (no data after), -2 when holes are not reported. */
  seekData?(fd: number, offset: number, hole: boolean): number;
  /** syncfs(2) on the file system of `fd` (native/syncfs.c). */
  syncFs?(fd: number): void;
  /** The AF-splitter chain over `count` stripes (native/af-chain.c); undefined for a hash OpenSSL lacks. */
  afChain?(stripes: Uint8Array, keyBytes: number, count: number, hash: string): Uint8Array | undefined;
  /** A digest of every `block` bytes of `data` into `out` (native/block-digests.c); false for a hash OpenSSL lacks. */
  blockDigests?(data: Uint8Array, block: number, hash: string, out: Uint8Array): boolean;
}

let loaded: NativeAddon | null | undefined;
let loadError: string | undefined;

/** The native module, or null (see `nativeAddonError()` for why). Loaded once per thread. */
export function nativeAddon(): NativeAddon | null {
  if (loaded !== undefined) return loaded;
  try {
    const require = createRequire(import.meta.url);
    // dist/src/ -> the package root's build/Release/.
    loaded = require(fileURLToPath(new URL('../../build/Release/brickcrypt_xts.node', import.meta.url))) as NativeAddon;
  } catch (err) {
    loaded = null;
    loadError = (err as Error).message.split('\n')[0];
  }
  return loaded;
}

/** Why the native module is unavailable (undefined when it loaded or was not tried). */
export function nativeAddonError(): string | undefined {
  return loadError;
}

/** Copies bytes with `TypedArray.prototype.set` (the portable path). */
export function copyBytesPortable(dst: Uint8Array, dstOffset: number, src: Uint8Array): void {
  dst.set(src, dstOffset);
}

/**
 * `dst.set(src, dstOffset)`, but as one memcpy when the native module is there. The difference
 * matters when `dst` lies in a SharedArrayBuffer: V8 then copies with relaxed atomics, one byte at
 * a time unless both sides are equally aligned (about 3 GB/s against 15+ GB/s here). Throws
 * RangeError when `src` does not fit.
 */
export function copyBytes(dst: Uint8Array, dstOffset: number, src: Uint8Array): void {
  const addon = nativeAddon();
  if (addon) addon.copyBytes(dst, dstOffset, src);
  else copyBytesPortable(dst, dstOffset, src);
}

/**
 * `length` bytes of zeroed shared memory whose first byte sits at a multiple of `alignment` (a
 * power of two), as O_DIRECT I/O requires; `aligned` says whether that could be arranged
 * (without the native module no address is known, and the view starts at offset 0).
 *
 * @example
 * const { view, aligned } = allocateAligned(4 << 20, 4096);
 */
export function allocateAligned(length: number, alignment: number): { view: Uint8Array; aligned: boolean } {
  const addon = nativeAddon();
  if (!addon) return { view: new Uint8Array(new SharedArrayBuffer(length)), aligned: false };
  const whole = new Uint8Array(new SharedArrayBuffer(length + alignment));
  const gap = addon.alignGap(whole, alignment);
  return { view: whole.subarray(gap, gap + length), aligned: true };
}

/** True when the native module is there and `view`'s first byte is at a multiple of `alignment`. */
export function isAddressAligned(view: Uint8Array, alignment: number): boolean {
  const addon = nativeAddon();
  return addon !== null && addon.alignGap(view, alignment) === 0;
}

/**
 * `lseek(fd, offset, SEEK_HOLE)` (`hole`) or `SEEK_DATA` through the native module: the offset found,
 * `'end'` when no data lies at or after `offset`, or `undefined` when the module (or the file system)
 * cannot say, and the caller must treat the file as all data.
 */
export function seekData(fd: number, offset: number, hole: boolean): number | 'end' | undefined {
  const addon = nativeAddon();
  if (!addon?.seekData) return undefined;
  const r = addon.seekData(fd, offset, hole);
  return r === -1 ? 'end' : r === -2 ? undefined : r;
}

/** syncfs(2) on the file system holding `fd`; false when the native module cannot (the caller fsyncs each file). */
export function syncFileSystem(fd: number): boolean {
  const addon = nativeAddon();
  if (!addon?.syncFs) return false;
  addon.syncFs(fd);
  return true;
}
