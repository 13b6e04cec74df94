/**
 * Hash algorithms usable in LUKS headers (AF split, PBKDF2, MK digest, ESSIV).
 *
 * Names follow cryptsetup's spelling ("sha256", "ripemd160"); lookups are
 * case-insensitive and normalised to lower case. Only hashes node:crypto (OpenSSL)
 * provides are supported; anything else (whirlpool, stribog, ...) raises
 * `UnsupportedError` naming the hash.
 */
import { createHash, getHashes } from 'node:crypto';
import { InvalidArgumentError, UnsupportedError } from '../errors.js';
import { nativeAddon } from '../native-addon.js';

/** A supported hash and its output size. */
export interface HashInfo {
  /** Canonical (cryptsetup) name, lower case. */
  readonly name: string;
  /** Digest size in bytes. */
  readonly digestSize: number;
}

// Digest sizes of the hashes cryptsetup may write; a name absent from
// crypto.getHashes() at runtime is treated as unsupported.
const KNOWN: ReadonlyArray<readonly [string, number]> = [
  ['sha1', 20],
  ['sha224', 28],
  ['sha256', 32],
  ['sha384', 48],
  ['sha512', 64],
  ['ripemd160', 20],
  ['sha3-224', 28],
  ['sha3-256', 32],
  ['sha3-384', 48],
  ['sha3-512', 64],
  ['md5', 16],
];

const available = new Set(getHashes().map((h) => h.toLowerCase()));
const TABLE = new Map<string, HashInfo>(
  KNOWN.filter(([n]) => available.has(n)).map(([name, digestSize]) => [name, Object.freeze({ name, digestSize })]),
);

/**
 * Looks up a hash by name.
 *
 * @example
 * hashInfo('SHA256') // { name: 'sha256', digestSize: 32 }
 * @throws UnsupportedError for an unknown or unavailable hash.
 */
export function hashInfo(name: string): HashInfo {
  const info = TABLE.get(name.trim().toLowerCase());
  if (!info) throw new UnsupportedError(`Hash ${name} is not supported.`);
  return info;
}

/** True when `hashInfo(name)` would succeed. */
export function isHashSupported(name: string): boolean {
  return TABLE.has(name.trim().toLowerCase());
}

/** Names of every supported hash. */
export function supportedHashes(): string[] {
  return [...TABLE.keys()];
}

/**
 * Digest of the concatenation of `parts`.
 *
 * @example
 * digest('sha256', new Uint8Array([1, 2])) // 32 bytes
 */
export function digest(name: string, ...parts: Uint8Array[]): Uint8Array {
  const h = createHash(hashInfo(name).name);
  for (const p of parts) h.update(p);
  const out = h.digest();
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/**
 * The digest of every `block` bytes of `data` (the last block may be shorter), one after another
 * into `out` (at least one digest per block): the per-block checksums of a reencryption's
 * `checksum` resilience. The native module does the whole buffer in one call
 * (native/block-digests.c); this loop is the reference and the fallback.
 *
 * @example
 * const sums = new Uint8Array((zone.length / 4096) * 32);
 * blockDigestsInto(zone, 4096, 'sha256', sums);
 */
export function blockDigestsInto(data: Uint8Array, block: number, name: string, out: Uint8Array, useNative = true): void {
  const { name: hash, digestSize } = hashInfo(name);
  if (!Number.isInteger(block) || block <= 0) throw new InvalidArgumentError(`Block digests need a positive whole block size, not ${block}.`);
  if (out.length < Math.ceil(data.length / block) * digestSize) throw new RangeError('blockDigestsInto: out cannot hold a digest per block.');
  if (useNative && nativeAddon()?.blockDigests?.(data, block, hash, out)) return;
  for (let i = 0, o = 0; i < data.length; i += block, o += digestSize) out.set(createHash(hash).update(data.subarray(i, i + block)).digest(), o);
}
