/**
 * Software KEKs: AES-256-GCM with a 32-byte key held in process memory, loaded from a
 * key file (mode 0600) or derived from a passphrase with Argon2id.
 *
 * Wrapped blob layout (all offsets in bytes):
 *
 * | offset | size | field                                   |
 * |--------|------|-----------------------------------------|
 * | 0      | 1    | format version, 0x01                    |
 * | 1      | 12   | GCM nonce (random per wrap, NIST SP 800-38D 8.2.2) |
 * | 13     | n    | ciphertext (same length as plaintext)   |
 * | 13+n   | 16   | GCM tag                                 |
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { promises as fsp, constants as fsc } from 'node:fs';
import argon2 from 'argon2';
import { InvalidArgumentError, InvalidObjectError, NotFoundError } from '../../errors.js';
import { Passphrase, SecretBytes } from '../../secret.js';
import type { KekProvider } from './kek-provider.js';

const VERSION = 0x01;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** AES-256: the KEK is exactly 32 bytes. */
export const KEK_BYTES = 32;

/**
 * AES-256-GCM KEK over an in-memory key; `close()` wipes it.
 *
 * @example
 * const kek = new AesGcmKek('file', SecretBytes.random(32));
 * const blob = await kek.wrap(bytes, aad);
 */
export class AesGcmKek implements KekProvider {
  readonly id: string;
  #key: SecretBytes;

  constructor(id: string, key: SecretBytes) {
    if (key.length !== KEK_BYTES) throw new InvalidArgumentError(`A KEK must be ${KEK_BYTES} bytes, got ${key.length}.`);
    this.id = id;
    this.#key = key;
  }

  async wrap(plaintext: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#key.expose(), nonce);
    cipher.setAAD(aad);
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    const out = new Uint8Array(1 + NONCE_BYTES + body.length + TAG_BYTES);
    out[0] = VERSION;
    out.set(nonce, 1);
    out.set(body, 1 + NONCE_BYTES);
    out.set(cipher.getAuthTag(), 1 + NONCE_BYTES + body.length);
    body.fill(0);
    return out;
  }

  async unwrap(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    if (wrapped.length < 1 + NONCE_BYTES + TAG_BYTES || wrapped[0] !== VERSION) {
      throw new InvalidObjectError('Wrapped secret is malformed (bad length or version).');
    }
    const nonce = wrapped.subarray(1, 1 + NONCE_BYTES);
    const body = wrapped.subarray(1 + NONCE_BYTES, wrapped.length - TAG_BYTES);
    const tag = wrapped.subarray(wrapped.length - TAG_BYTES);
    const decipher = createDecipheriv('aes-256-gcm', this.#key.expose(), nonce);
    decipher.setAAD(aad);
    decipher.setAuthTag(tag);
    const out = decipher.update(body);
    try {
      decipher.final();
    } catch (err) {
      out.fill(0);
      throw new InvalidObjectError('Wrapped secret failed authentication (tampered, moved, or wrong KEK).', { cause: err });
    }
    return new Uint8Array(out.buffer, out.byteOffset, out.length);
  }

  async close(): Promise<void> {
    if (!this.#key.wiped) this.#key.wipe();
  }
}

/**
 * Creates a new random KEK file with mode 0600. Fails with AlreadyExists semantics
 * (InvalidArgumentError) if the file exists: a KEK file is never overwritten.
 */
export async function createKekFile(path: string): Promise<void> {
  const key = randomBytes(KEK_BYTES);
  try {
    await fsp.writeFile(path, key, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new InvalidArgumentError(`KEK file ${path} already exists.`);
    throw new InvalidArgumentError(`Cannot create KEK file ${path}: ${(err as Error).message}`);
  } finally {
    key.fill(0);
  }
}

/**
 * Loads a KEK file (exactly 32 bytes). Refuses a file readable or writable by group or
 * others, as ssh does for private keys: such a KEK protects nothing.
 *
 * @example
 * const kek = await loadKekFile('/home/me/.brickcrypt/keystore.kek');
 */
export async function loadKekFile(path: string): Promise<AesGcmKek> {
  let handle: fsp.FileHandle;
  try {
    handle = await fsp.open(path, fsc.O_RDONLY);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`KEK file ${path} does not exist.`);
    throw new InvalidArgumentError(`Cannot read KEK file ${path}: ${(err as Error).message}`);
  }
  try {
    const st = await handle.stat();
    if ((st.mode & 0o077) !== 0) {
      throw new InvalidArgumentError(`KEK file ${path} is accessible by group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600.`);
    }
    const bytes = new Uint8Array(await handle.readFile());
    if (bytes.length !== KEK_BYTES) {
      bytes.fill(0);
      throw new InvalidArgumentError(`KEK file ${path} must hold exactly ${KEK_BYTES} bytes, it holds ${bytes.length}.`);
    }
    return new AesGcmKek('file', new SecretBytes(bytes));
  } finally {
    await handle.close();
  }
}

/** Argon2id parameters of a passphrase KEK (stored next to the keystore; none is secret). */
export interface Argon2idParams {
  /** base64 salt, 16 bytes. */
  salt: string;
  timeCost: number;
  memoryKiB: number;
  parallelism: number;
}

/** Defaults: RFC 9106 section 4 "second recommended option" scaled to an interactive unlock (64 MiB, t=3, p=4). */
export function newArgon2idParams(overrides: Partial<Omit<Argon2idParams, 'salt'>> = {}): Argon2idParams {
  return {
    salt: randomBytes(16).toString('base64'),
    timeCost: overrides.timeCost ?? 3,
    memoryKiB: overrides.memoryKiB ?? 65536,
    parallelism: overrides.parallelism ?? 4,
  };
}

/**
 * Derives a KEK from a passphrase with Argon2id (RFC 9106).
 *
 * @example
 * const params = newArgon2idParams();
 * const kek = await deriveKekFromPassphrase(Passphrase.fromString('pw'), params);
 */
export async function deriveKekFromPassphrase(passphrase: Passphrase, params: Argon2idParams): Promise<AesGcmKek> {
  if (passphrase.length === 0) throw new InvalidArgumentError('The KEK passphrase is empty.');
  const pw = Buffer.from(passphrase.expose());
  try {
    const raw = await argon2.hash(pw, {
      raw: true,
      type: argon2.argon2id,
      salt: Buffer.from(params.salt, 'base64'),
      timeCost: params.timeCost,
      memoryCost: params.memoryKiB,
      parallelism: params.parallelism,
      hashLength: KEK_BYTES,
    });
    return new AesGcmKek('passphrase:argon2id', new SecretBytes(new Uint8Array(raw.buffer, raw.byteOffset, raw.length)));
  } finally {
    pw.fill(0);
  }
}
