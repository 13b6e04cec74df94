/**
 * A key-encryption key that never leaves a PKCS#11 token (an HSM, or SoftHSM2 for tests).
 *
 * The KEK is an AES-256 secret key object on the token, created with CKA_SENSITIVE=true
 * and CKA_EXTRACTABLE=false, so the token refuses to reveal its value
 * (CKR_ATTRIBUTE_SENSITIVE). Wrapping is CKM_AES_GCM run inside the token by
 * C_Encrypt/C_Decrypt (PKCS#11 v2.40 section 2.12.3, CK_GCM_PARAMS) with a fresh
 * 96-bit IV per call and a 128-bit tag.
 *
 * Wrapped blob layout (all offsets in bytes):
 *
 * | offset | size | field                                            |
 * |--------|------|--------------------------------------------------|
 * | 0      | 1    | format version, 0x01                             |
 * | 1      | 12   | GCM IV (random per wrap)                         |
 * | 13     | n    | ciphertext (n = plaintext length)                |
 * | 13 + n | 16   | GCM tag (appended by the token)                  |
 *
 * The GCM additional data is the version byte followed by the caller's `aad`, so
 * neither the version nor the binding to the caller's context can be changed.
 *
 * The `pkcs11js` native addon is loaded lazily, so the rest of brickcrypt runs
 * without it installed.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import {
  BackendUnavailableError,
  InvalidArgumentError,
  InvalidObjectError,
  KeyNotFoundError,
  NotFoundError,
  UnsupportedError,
  WrongPassphraseError,
} from '../../errors.js';
import { SecretBytes } from '../../secret.js';
import type { KekProvider } from './kek-provider.js';

/** Where SoftHSM2's Debian package installs its module. */
export const DEFAULT_PKCS11_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

const BLOB_VERSION = 0x01;
const OFF_VERSION = 0;
const OFF_IV = 1;
const IV_BYTES = 12;
const OFF_CIPHERTEXT = OFF_IV + IV_BYTES;
const TAG_BYTES = 16;
const KEK_BYTES = 32;

export interface Pkcs11KekOptions {
  /** Path of the PKCS#11 module (default: SoftHSM2's). */
  modulePath?: string;
  /** Token label (as `softhsm2-util --label`); one of `tokenLabel` / `slot` is required. */
  tokenLabel?: string;
  /** Slot id as the module reports it (e.g. `softhsm2-util --show-slots`). */
  slot?: number | bigint;
  /** User PIN; one of `pin`, `pinFile`, `pinEnv` is required. Not wiped by the provider. */
  pin?: SecretBytes;
  /** File holding the user PIN (one trailing newline is ignored). */
  pinFile?: string;
  /** Name of the environment variable holding the user PIN. */
  pinEnv?: string;
  /** CKA_LABEL of the AES key on the token. */
  keyLabel: string;
}

// Minimal structural view of the pkcs11js module, so this file type-checks without it.
type Handle = Buffer;
interface Pkcs11Lib {
  load(path: string): void;
  close(): void;
  C_Initialize(): void;
  C_Finalize(): void;
  C_GetSlotList(tokenPresent?: boolean): Handle[];
  C_GetTokenInfo(slot: Handle): { label: string };
  C_OpenSession(slot: Handle, flags: number): Handle;
  C_CloseSession(session: Handle): void;
  C_Login(session: Handle, userType: number, pin?: string): void;
  C_FindObjectsInit(session: Handle, template: Array<{ type: number; value?: unknown }>): void;
  C_FindObjects(session: Handle, max: number): Handle[];
  C_FindObjectsFinal(session: Handle): void;
  C_GenerateKey(session: Handle, mechanism: { mechanism: number }, template: Array<{ type: number; value?: unknown }>): Handle;
  C_GetAttributeValue(session: Handle, object: Handle, template: Array<{ type: number; value?: unknown }>): Array<{ type: number; value?: Buffer }>;
  C_EncryptInit(session: Handle, mechanism: unknown, key: Handle): void;
  C_Encrypt(session: Handle, data: Buffer, out: Buffer): Buffer;
  C_DecryptInit(session: Handle, mechanism: unknown, key: Handle): void;
  C_Decrypt(session: Handle, data: Buffer, out: Buffer): Buffer;
}
type Pkcs11Module = Record<string, number> & { PKCS11: new () => Pkcs11Lib };

let modulePromise: Promise<Pkcs11Module> | undefined;

async function loadPkcs11js(): Promise<Pkcs11Module> {
  modulePromise ??= (async () => {
    try {
      const name = 'pkcs11js';
      const mod = (await import(name)) as { default?: Pkcs11Module } & Pkcs11Module;
      return (mod.default ?? mod) as Pkcs11Module;
    } catch (err) {
      modulePromise = undefined;
      throw new UnsupportedError(`PKCS#11 support needs the optional npm package pkcs11js (npm install pkcs11js): ${(err as Error).message}`);
    }
  })();
  return modulePromise;
}

/** The CKR_* name of a pkcs11js error, or undefined for other errors. */
function ckr(err: unknown): string | undefined {
  const m = /^(CKR_[A-Z0-9_]+)/.exec((err as Error)?.message ?? '');
  return m?.[1];
}

/**
 * One loaded module per path, shared by every provider in the process: C_Initialize may
 * run only once per process and C_Finalize would close the sessions of every other user.
 */
interface LoadedModule {
  lib: Pkcs11Lib;
  refs: number;
}
const loadedModules = new Map<string, LoadedModule>();

async function acquireModule(path: string): Promise<{ p11: Pkcs11Module; lib: Pkcs11Lib }> {
  const p11 = await loadPkcs11js();
  let entry = loadedModules.get(path);
  if (!entry) {
    const lib = new p11.PKCS11();
    try {
      lib.load(path);
    } catch (err) {
      throw new BackendUnavailableError(`Cannot load PKCS#11 module ${path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      lib.C_Initialize();
    } catch (err) {
      if (ckr(err) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
        lib.close();
        throw new BackendUnavailableError(`C_Initialize failed for ${path}: ${(err as Error).message}`, { cause: err });
      }
    }
    entry = { lib, refs: 0 };
    loadedModules.set(path, entry);
  }
  entry.refs++;
  return { p11, lib: entry.lib };
}

function releaseModule(path: string): void {
  const entry = loadedModules.get(path);
  if (!entry) return;
  entry.refs--;
  if (entry.refs > 0) return;
  loadedModules.delete(path);
  try {
    entry.lib.C_Finalize();
  } finally {
    entry.lib.close();
  }
}

async function resolvePin(options: Pkcs11KekOptions): Promise<SecretBytes> {
  const given = [options.pin, options.pinFile, options.pinEnv].filter((x) => x !== undefined).length;
  if (given !== 1) throw new InvalidArgumentError('PKCS#11: give exactly one of pin, pinFile or pinEnv.');
  if (options.pin) return options.pin.clone();
  let raw: Buffer;
  if (options.pinFile !== undefined) {
    try {
      raw = await fsp.readFile(options.pinFile);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`PIN file ${options.pinFile} does not exist.`);
      throw new InvalidArgumentError(`Cannot read PIN file ${options.pinFile}: ${(err as Error).message}`);
    }
  } else {
    const value = process.env[options.pinEnv!];
    if (value === undefined || value === '') throw new InvalidArgumentError(`PKCS#11: environment variable ${options.pinEnv} holding the PIN is not set.`);
    raw = Buffer.from(value, 'utf8');
  }
  // A PIN file written by `echo` ends in a newline that is not part of the PIN.
  let end = raw.length;
  if (end > 0 && raw[end - 1] === 0x0a) end--;
  if (end > 0 && raw[end - 1] === 0x0d) end--;
  const pin = SecretBytes.copyOf(raw.subarray(0, end));
  raw.fill(0);
  if (pin.length === 0) throw new InvalidArgumentError('PKCS#11: the PIN is empty.');
  return pin;
}

function slotIdOf(handle: Handle): bigint {
  return handle.length >= 8 ? handle.readBigUInt64LE(0) : BigInt(handle.readUInt32LE(0));
}

/**
 * A `KekProvider` backed by an AES-256 key inside a PKCS#11 token.
 *
 * @example
 * const kek = await Pkcs11Kek.open({ tokenLabel: 'brickcrypt', pinFile: '/etc/brickcrypt/pin', keyLabel: 'kek', create: true });
 * const blob = await kek.wrap(secret.expose(), aad);
 * const bytes = await kek.unwrap(blob, aad); // caller wipes bytes
 * await kek.close();
 */
export class Pkcs11Kek implements KekProvider {
  readonly id: string;
  #p11: Pkcs11Module;
  #lib: Pkcs11Lib;
  #modulePath: string;
  #session: Handle | undefined;
  #key: Handle;

  private constructor(p11: Pkcs11Module, lib: Pkcs11Lib, modulePath: string, session: Handle, key: Handle, id: string) {
    this.#p11 = p11;
    this.#lib = lib;
    this.#modulePath = modulePath;
    this.#session = session;
    this.#key = key;
    this.id = id;
  }

  /**
   * Opens a session on the token, logs in and finds the key by label. With `create`, a
   * missing key is generated on the token (C_GenerateKey CKM_AES_KEY_GEN, CKA_TOKEN true);
   * without it a missing key is a `KeyNotFoundError`.
   */
  static async open(options: Pkcs11KekOptions & { create?: boolean }): Promise<Pkcs11Kek> {
    if (!options.keyLabel) throw new InvalidArgumentError('PKCS#11: a key label is required.');
    if ((options.tokenLabel === undefined) === (options.slot === undefined)) {
      throw new InvalidArgumentError('PKCS#11: give exactly one of tokenLabel or slot.');
    }
    const pin = await resolvePin(options);
    const modulePath = options.modulePath ?? DEFAULT_PKCS11_MODULE;
    const { p11, lib } = await acquireModule(modulePath);
    let session: Handle | undefined;
    try {
      const { slot, label } = findSlot(lib, options);
      try {
        session = lib.C_OpenSession(slot, p11.CKF_SERIAL_SESSION! | p11.CKF_RW_SESSION!);
      } catch (err) {
        throw new BackendUnavailableError(`PKCS#11: cannot open a session on token '${label}': ${(err as Error).message}`, { cause: err });
      }
      try {
        lib.C_Login(session, p11.CKU_USER!, Buffer.from(pin.expose()).toString('utf8'));
      } catch (err) {
        const code = ckr(err);
        // Login state is per application and token: another provider may have logged in.
        if (code === 'CKR_PIN_INCORRECT' || code === 'CKR_PIN_LOCKED' || code === 'CKR_PIN_INVALID' || code === 'CKR_PIN_LEN_RANGE') {
          throw new WrongPassphraseError(`PKCS#11: login to token '${label}' refused (${code}).`);
        }
        if (code !== 'CKR_USER_ALREADY_LOGGED_IN') {
          throw new BackendUnavailableError(`PKCS#11: login to token '${label}' failed: ${(err as Error).message}`, { cause: err });
        }
      }
      let key = findKey(p11, lib, session, options.keyLabel);
      if (!key) {
        if (!options.create) throw new KeyNotFoundError(`pkcs11:${label}/${options.keyLabel}`);
        key = generateKey(p11, lib, session, options.keyLabel);
      }
      return new Pkcs11Kek(p11, lib, modulePath, session, key, `pkcs11:${label}/${options.keyLabel}`);
    } catch (err) {
      if (session) {
        try {
          lib.C_CloseSession(session);
        } catch {
          // The session is being abandoned because of `err`; that error is the one to report.
        }
      }
      releaseModule(modulePath);
      throw err;
    } finally {
      pin.wipe();
    }
  }

  /** `open` with `create: true`: ensures the key exists on the token. */
  static async init(options: Pkcs11KekOptions): Promise<Pkcs11Kek> {
    return Pkcs11Kek.open({ ...options, create: true });
  }

  #mechanism(iv: Buffer, aad: Uint8Array): unknown {
    const p11 = this.#p11;
    return {
      mechanism: p11.CKM_AES_GCM,
      parameter: {
        type: p11.CK_PARAMS_AES_GCM,
        iv,
        aad: Buffer.concat([Buffer.of(BLOB_VERSION), aad]),
        ivBits: IV_BYTES * 8,
        tagBits: TAG_BYTES * 8,
      },
    };
  }

  #sessionOrThrow(): Handle {
    if (!this.#session) throw new InvalidArgumentError(`KEK ${this.id} is closed.`);
    return this.#session;
  }

  async wrap(plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const session = this.#sessionOrThrow();
    // PKCS#11 modules reject a zero-length C_Encrypt input (CKR_ARGUMENTS_BAD); nothing secret is empty.
    if (plaintext.length === 0) throw new InvalidArgumentError(`KEK ${this.id}: refusing to wrap an empty secret.`);
    const iv = randomBytes(IV_BYTES);
    const input = Buffer.from(plaintext);
    try {
      this.#lib.C_EncryptInit(session, this.#mechanism(iv, aad), this.#key);
      const out = this.#lib.C_Encrypt(session, input, Buffer.alloc(plaintext.length + TAG_BYTES));
      const blob = new Uint8Array(OFF_CIPHERTEXT + out.length);
      blob[OFF_VERSION] = BLOB_VERSION;
      blob.set(iv, OFF_IV);
      blob.set(out, OFF_CIPHERTEXT);
      return blob;
    } catch (err) {
      throw new BackendUnavailableError(`PKCS#11 wrap with ${this.id} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      input.fill(0);
    }
  }

  async unwrap(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const session = this.#sessionOrThrow();
    if (wrapped.length < OFF_CIPHERTEXT + TAG_BYTES || wrapped[OFF_VERSION] !== BLOB_VERSION) {
      throw new InvalidObjectError(`Wrapped blob is not a ${this.id} AES-GCM blob (bad length or version).`);
    }
    const iv = Buffer.from(wrapped.subarray(OFF_IV, OFF_CIPHERTEXT));
    const body = Buffer.from(wrapped.subarray(OFF_CIPHERTEXT));
    const out = Buffer.alloc(body.length);
    try {
      this.#lib.C_DecryptInit(session, this.#mechanism(iv, aad), this.#key);
      const plain = this.#lib.C_Decrypt(session, body, out);
      const result = new Uint8Array(plain);
      return result;
    } catch (err) {
      const code = ckr(err);
      // Tokens report a failed GCM tag check differently (SoftHSM2: CKR_GENERAL_ERROR).
      if (code === 'CKR_ENCRYPTED_DATA_INVALID' || code === 'CKR_GENERAL_ERROR' || code === 'CKR_ENCRYPTED_DATA_LEN_RANGE' || code === 'CKR_FUNCTION_FAILED') {
        throw new InvalidObjectError(`Wrapped blob does not authenticate under ${this.id} (tampered, other aad, or another KEK).`, { cause: err });
      }
      throw new BackendUnavailableError(`PKCS#11 unwrap with ${this.id} failed: ${(err as Error).message}`, { cause: err });
    } finally {
      out.fill(0);
    }
  }

  async close(): Promise<void> {
    const session = this.#session;
    if (!session) return;
    this.#session = undefined;
    try {
      // Closing the last session of the application logs the user out (PKCS#11 v2.40 5.6).
      this.#lib.C_CloseSession(session);
    } finally {
      releaseModule(this.#modulePath);
    }
  }
}

function findSlot(lib: Pkcs11Lib, options: Pkcs11KekOptions): { slot: Handle; label: string } {
  let slots: Handle[];
  try {
    slots = lib.C_GetSlotList(true);
  } catch (err) {
    throw new BackendUnavailableError(`PKCS#11: cannot list slots: ${(err as Error).message}`, { cause: err });
  }
  for (const slot of slots) {
    // Token labels are blank-padded to 32 bytes (CK_TOKEN_INFO.label).
    const label = lib.C_GetTokenInfo(slot).label.replace(/[\s\0]+$/, '');
    if (options.tokenLabel !== undefined ? label === options.tokenLabel : slotIdOf(slot) === BigInt(options.slot!)) {
      return { slot, label };
    }
  }
  const what = options.tokenLabel !== undefined ? `token '${options.tokenLabel}'` : `slot ${options.slot}`;
  throw new NotFoundError(`PKCS#11: no ${what} with a token present.`);
}

function findKey(p11: Pkcs11Module, lib: Pkcs11Lib, session: Handle, label: string): Handle | undefined {
  lib.C_FindObjectsInit(session, [
    { type: p11.CKA_CLASS!, value: p11.CKO_SECRET_KEY },
    { type: p11.CKA_KEY_TYPE!, value: p11.CKK_AES },
    { type: p11.CKA_LABEL!, value: label },
  ]);
  let found: Handle[];
  try {
    found = lib.C_FindObjects(session, 2);
  } finally {
    lib.C_FindObjectsFinal(session);
  }
  if (found.length > 1) throw new InvalidObjectError(`PKCS#11: more than one AES key is labelled '${label}'.`);
  const key = found[0];
  if (!key) return undefined;
  const attrs = lib.C_GetAttributeValue(session, key, [
    { type: p11.CKA_VALUE_LEN! },
    { type: p11.CKA_SENSITIVE! },
    { type: p11.CKA_EXTRACTABLE! },
  ]);
  const valueLen = attrs[0]!.value!.length >= 8 ? Number(attrs[0]!.value!.readBigUInt64LE(0)) : attrs[0]!.value!.readUInt32LE(0);
  const sensitive = attrs[1]!.value![0] === 1;
  const extractable = attrs[2]!.value![0] === 1;
  // Refuse a key that could have been exported: the point of this provider is that it cannot.
  if (valueLen !== KEK_BYTES || !sensitive || extractable) {
    throw new InvalidObjectError(
      `PKCS#11 key '${label}' must be a ${KEK_BYTES * 8}-bit AES key with CKA_SENSITIVE and without CKA_EXTRACTABLE ` +
        `(has ${valueLen * 8} bits, sensitive=${sensitive}, extractable=${extractable}).`,
    );
  }
  return key;
}

function generateKey(p11: Pkcs11Module, lib: Pkcs11Lib, session: Handle, label: string): Handle {
  try {
    return lib.C_GenerateKey(session, { mechanism: p11.CKM_AES_KEY_GEN! }, [
      { type: p11.CKA_CLASS!, value: p11.CKO_SECRET_KEY },
      { type: p11.CKA_KEY_TYPE!, value: p11.CKK_AES },
      { type: p11.CKA_VALUE_LEN!, value: KEK_BYTES },
      { type: p11.CKA_LABEL!, value: label },
      { type: p11.CKA_TOKEN!, value: true },
      { type: p11.CKA_PRIVATE!, value: true },
      { type: p11.CKA_SENSITIVE!, value: true },
      { type: p11.CKA_EXTRACTABLE!, value: false },
      { type: p11.CKA_ENCRYPT!, value: true },
      { type: p11.CKA_DECRYPT!, value: true },
      { type: p11.CKA_WRAP!, value: false },
      { type: p11.CKA_UNWRAP!, value: false },
    ]);
  } catch (err) {
    throw new BackendUnavailableError(`PKCS#11: cannot generate AES key '${label}': ${(err as Error).message}`, { cause: err });
  }
}
