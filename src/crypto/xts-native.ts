/**
 * The native AES-XTS kernel (native/xts.c, built by scripts/build-native.mjs), in place in the
 * caller's memory, with two engines: the AES-NI instructions directly (x86-64 CPUs that have
 * them), or OpenSSL's own XTS with one EVP call per sector. About 2.5x the WebAssembly kernel
 * for 512-byte sectors and 3-4x for 4096-byte ones, because node:crypto's `Cipher.update` must
 * allocate and copy its output on every call and this does neither.
 *
 * Optional: `xtsNative()` returns null when the module was not built or does not load, and
 * sector-cipher.ts falls back to the batched ECB + WebAssembly kernel.
 */
import { InvalidArgumentError } from '../errors.js';
import { nativeAddon, nativeAddonError, type NativeAddon } from '../native-addon.js';

type NativeXtsModule = Pick<NativeAddon, 'createKeys' | 'engine' | 'run' | 'wipe'>;

/** IV generators the kernel computes itself (dm-crypt names). */
export const NATIVE_IV_MODES = { plain64: 0, plain: 1, null: 2 } as const;
export type NativeIvMode = keyof typeof NATIVE_IV_MODES;

/** The native AES-XTS kernel, or null (see `xtsNativeError()` for why). Loaded once per thread. */
export function xtsNative(): NativeXtsModule | null {
  return nativeAddon();
}

/** Why the native kernel is unavailable (undefined when it loaded or was not tried). */
export function xtsNativeError(): string | undefined {
  return nativeAddonError();
}

/**
 * One keyed AES-XTS instance of the native kernel. `key` (32 or 64 bytes) goes into OpenSSL's
 * key schedules; the caller may wipe its copy. The caller validates runs (sector multiples,
 * safe IV numbers) - see `checkRun` in sector-cipher.ts.
 */
export class NativeXtsKeys {
  #keys: object | null;
  /** The engine in use. */
  readonly engine: 'aesni' | 'evp';

  constructor(
    private readonly mod: NativeXtsModule,
    key: Uint8Array,
    private readonly ivMode: NativeIvMode,
    /** 'auto': AES-NI when available; 'evp': OpenSSL's XTS only. */
    engine: 'auto' | 'evp' = 'auto',
  ) {
    this.#keys = mod.createKeys(key, engine === 'evp' ? 1 : 0);
    this.engine = mod.engine(this.#keys);
  }

  run(data: Uint8Array, firstIv: number, sectorSize: number, encrypt: boolean): void {
    if (!this.#keys) throw new InvalidArgumentError('Sector cipher was wiped.');
    if (data.length === 0) return;
    this.mod.run(this.#keys, data, firstIv, sectorSize, sectorSize / 512, NATIVE_IV_MODES[this.ivMode], encrypt);
  }

  /** Frees OpenSSL's key schedules now (OpenSSL cleanses them). */
  wipe(): void {
    if (this.#keys) this.mod.wipe(this.#keys);
    this.#keys = null;
  }
}
