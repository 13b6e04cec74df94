/**
 * The optional native module (native/*.c, built by scripts/build-native.mjs into
 * build/Release/brickcrypt_xts.node): the AES-XTS kernel (see crypto/xts-native.ts) and a
 * plain memory copy. Everything it offers has a slower portable fallback, so a missing or
 * broken build only costs speed; `nativeAddonError()` says why it did not load.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** What the compiled module exports (native/xts.c, native/copy-bytes.c). */
export interface NativeAddon {
  /** engine 0: AES-NI when the CPU has it, else OpenSSL EVP; 1: OpenSSL EVP only. */
  createKeys(key: Uint8Array, engine: number): object;
  engine(keys: object): 'aesni' | 'evp';
  run(keys: object, data: Uint8Array, firstIv: number, sectorSize: number, ivStep: number, ivMode: number, encrypt: boolean): void;
  wipe(keys: object): void;
  copyBytes(dst: Uint8Array, dstOffset: number, src: Uint8Array): void;
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
