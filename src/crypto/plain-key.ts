/**
 * How cryptsetup turns its input into the volume key of a plain dm-crypt mapping
 * (`cryptsetup open --type plain`, `cryptsetup create`). Pure: the bytes read in, the key out.
 * The rules, each with its source in cryptsetup, are written down in docs/plain.md.
 *
 * - Where the input came from decides whether it is hashed at all (src/cryptsetup.c,
 *   action_open_plain): a key file other than "-" is never hashed (`--hash` is ignored);
 *   standard input and the terminal are hashed with `--hash`, default sha256 (cryptsetup
 *   2.7 and later; ripemd160 before), and `--hash plain` means "not hashed".
 * - Not hashed (lib/setup.c, process_key): the input is the key, truncated to the key size or,
 *   when shorter, zero-padded.
 * - Hashed (lib/crypt_plain.c, crypt_plain_hash): `hash[:length]`; the first `length` bytes
 *   (default: the whole key) are hash rounds — round r hashes r letters "A" followed by the
 *   input, each round gives min(digest size, bytes left) bytes — and the rest is zeros.
 *   `plain[:length]` copies the input instead of hashing (an error if it is shorter).
 * - How much is read (src/utils_password.c tools_get_key, lib/utils.c crypt_keyfile_device_read):
 *   see `plainReadRule`.
 */
import { InvalidArgumentError, UnsupportedError } from '../errors.js';
import { digest, hashInfo } from './hash.js';

/** Where the passphrase or key came from, as cryptsetup tells them apart. */
export type PlainKeyInput =
  /** Typed at a terminal (one line, the newline not included). */
  | 'terminal'
  /** Standard input that is not a terminal, without `--key-file`: read to the first newline. */
  | 'stdin-line'
  /** `--key-file -`: standard input read to its end, newlines included. */
  | 'stdin'
  /** `--key-file FILE`: the file's bytes. */
  | 'key-file';

/** cryptsetup's compiled-in plain defaults since 2.7.0 (configure.ac, commit "plain: Set default cipher to aes-xts-plain64 and hash to sha256"). */
export const PLAIN_DEFAULTS = Object.freeze({ cipher: 'aes-xts-plain64', keyBits: 256, hash: 'sha256' });

/** The defaults of cryptsetup before 2.7.0 (e.g. 2.6.1 in Debian 12), which older plain volumes were made with. */
export const PLAIN_DEFAULTS_BEFORE_2_7 = Object.freeze({ cipher: 'aes-cbc-essiv:sha256', keyBits: 256, hash: 'ripemd160' });

/** Largest input cryptsetup reads without `--keyfile-size` (DEFAULT_KEYFILE_SIZE_MAXKB, 8192 KiB). */
export const PLAIN_MAX_INPUT_BYTES = 8192 * 1024;

/** Longest passphrase read from a terminal (DEFAULT_PASSPHRASE_SIZE_MAX, 512). */
export const PLAIN_MAX_TERMINAL_BYTES = 512;

/** cryptsetup refuses plain keys above 1024 bytes (_crypt_format_plain). */
export const PLAIN_MAX_KEY_BYTES = 1024;

/**
 * The hash spec cryptsetup applies to input from `input`, or `undefined` when the input is
 * used as the key directly.
 *
 * @example
 * effectivePlainHash('stdin', undefined)     // 'sha256'
 * effectivePlainHash('key-file', 'sha512')   // undefined: --hash is ignored with a key file
 * effectivePlainHash('terminal', 'plain')    // undefined
 */
export function effectivePlainHash(input: PlainKeyInput, hash: string | undefined, defaultHash: string = PLAIN_DEFAULTS.hash): string | undefined {
  if (input === 'key-file') return undefined;
  const spec = hash ?? defaultHash;
  return spec === 'plain' ? undefined : spec;
}

/** How much of the input cryptsetup reads for a plain key. */
export interface PlainReadRule {
  /** Read exactly this many bytes (fewer is an error). */
  exactBytes?: number;
  /** Otherwise read at most this many (more is an error: "Maximum keyfile size exceeded"). */
  maxBytes: number;
  /** Stop at the first newline and drop it. */
  stopAtNewline: boolean;
  /** Whether `--keyfile-offset` may be used (not with a terminal). */
  offsetAllowed: boolean;
}

/**
 * The read rule for a plain key from `input` with effective hash `hash` (from
 * `effectivePlainHash`), key size `keyBytes` and the user's `--keyfile-size`, if any.
 *
 * Sources: src/cryptsetup.c action_open_plain (key_size_max: the key size when not hashed and
 * a key file is named, including "-"; else `--keyfile-size`), lib/utils.c
 * crypt_keyfile_device_read (a given size must be read in full; without one the limit is 8 MiB),
 * src/utils_password.c (a terminal reads one line of at most 512 characters, no offset).
 */
export function plainReadRule(input: PlainKeyInput, hash: string | undefined, keyBytes: number, keyfileSize?: number): PlainReadRule {
  if (input === 'terminal') return { maxBytes: PLAIN_MAX_TERMINAL_BYTES, stopAtNewline: true, offsetAllowed: false };
  const named = input === 'key-file' || input === 'stdin';
  // A key file read without hashing always reads the key size; --keyfile-size is ignored.
  const size = named && hash === undefined ? keyBytes : keyfileSize;
  const stopAtNewline = input === 'stdin-line';
  if (size !== undefined && size > 0) return { exactBytes: size, maxBytes: size, stopAtNewline, offsetAllowed: true };
  return { maxBytes: PLAIN_MAX_INPUT_BYTES, stopAtNewline, offsetAllowed: true };
}

/** A parsed `--hash` value: `name[:length]`. */
export interface PlainHashSpec {
  /** "plain" or a hash name. */
  name: string;
  /** Bytes taken from the hash (or the input); the rest of the key is zeros. */
  length?: number;
}

export function parsePlainHashSpec(spec: string): PlainHashSpec {
  const colon = spec.indexOf(':');
  if (colon < 0) return { name: spec.trim().toLowerCase() };
  const lengthText = spec.slice(colon + 1);
  if (!/^\d+$/.test(lengthText)) throw new InvalidArgumentError(`Hash length in "${spec}" is not a number.`);
  return { name: spec.slice(0, colon).trim().toLowerCase(), length: Number(lengthText) };
}

/** Throws when `spec` could not derive a key (unknown hash, bad length). */
export function validatePlainHash(spec: string, keyBytes: number): void {
  const parsed = parsePlainHashSpec(spec);
  if (parsed.length !== undefined && parsed.length > keyBytes) {
    throw new InvalidArgumentError(`Hash length ${parsed.length} in "${spec}" is longer than the ${keyBytes}-byte key.`);
  }
  if (parsed.name !== 'plain') hashInfo(parsed.name);
}

/**
 * cryptsetup's crypt_plain_hash: `keyBytes` of key from `passphrase` with hash spec `spec`.
 *
 * @example
 * plainHash('sha256', 64, pass)  // sha256(pass) || sha256("A" || pass)
 * plainHash('sha256:16', 32, pass) // first 16 bytes of sha256(pass), then 16 zeros
 */
export function plainHash(spec: string, keyBytes: number, passphrase: Uint8Array): Uint8Array {
  const { name, length } = parsePlainHashSpec(spec);
  const hashed = length ?? keyBytes;
  if (hashed > keyBytes) throw new InvalidArgumentError(`Hash length ${hashed} is longer than the ${keyBytes}-byte key.`);
  const key = new Uint8Array(keyBytes);
  if (name === 'plain') {
    if (passphrase.length < hashed) throw new InvalidArgumentError(`The input is shorter than the ${hashed} bytes "${spec}" takes.`);
    key.set(passphrase.subarray(0, hashed));
    return key;
  }
  let info;
  try {
    info = hashInfo(name);
  } catch {
    throw new UnsupportedError(`Hash ${name} is not supported for plain passphrase hashing.`);
  }
  // "hack from hashalot to avoid null bytes in key": round r prefixes r letters 'A'.
  for (let round = 0, at = 0; at < hashed; round++) {
    const out = digest(info.name, new Uint8Array(round).fill(0x41), passphrase);
    const take = Math.min(out.length, hashed - at);
    key.set(out.subarray(0, take), at);
    out.fill(0);
    at += take;
  }
  return key;
}

/**
 * The plain volume key from the bytes read (`data`, already cut by `plainReadRule`):
 * hashed with `hash`, or, when `hash` is undefined, truncated or zero-padded (process_key).
 */
export function plainVolumeKey(data: Uint8Array, keyBytes: number, hash: string | undefined): Uint8Array {
  if (!Number.isInteger(keyBytes) || keyBytes <= 0 || keyBytes > PLAIN_MAX_KEY_BYTES) {
    throw new InvalidArgumentError(`Invalid plain key size ${keyBytes} bytes.`);
  }
  if (hash !== undefined) return plainHash(hash, keyBytes, data);
  const key = new Uint8Array(keyBytes);
  key.set(data.subarray(0, keyBytes));
  return key;
}

/**
 * Cuts the bytes read (after `--keyfile-offset`) by `rule`: the first line when reading stops
 * at a newline, exactly `exactBytes` (fewer is cryptsetup's "Cannot read requested amount of
 * data"), or everything up to `maxBytes` ("Maximum keyfile size exceeded" beyond).
 */
export function takePlainInput(input: Uint8Array, rule: PlainReadRule): Uint8Array {
  let data = input;
  if (rule.stopAtNewline) {
    const nl = data.indexOf(0x0a);
    if (nl >= 0) data = data.subarray(0, nl);
  }
  if (rule.exactBytes !== undefined) {
    if (data.length < rule.exactBytes) {
      throw new InvalidArgumentError(`The key input has ${data.length} bytes; ${rule.exactBytes} are needed (cryptsetup: "Cannot read requested amount of data").`);
    }
    return data.subarray(0, rule.exactBytes);
  }
  if (data.length > rule.maxBytes) throw new InvalidArgumentError(`The key input exceeds ${rule.maxBytes} bytes.`);
  return data;
}
