/**
 * LUKS anti-forensic information splitter (LUKS1 On-Disk Format Specification,
 * section 2.4 "AF-Splitter"; the same "luks1" AF type in LUKS2).
 *
 * The key is expanded to `stripes` stripes so that losing any part of the key
 * material makes the key unrecoverable:
 *   d_0 = 0; d_{i+1} = H(d_i xor s_i) for i < stripes-1; s_last = key xor d_{stripes-1}
 * where H ("diffuse") hashes the buffer per digest-sized block j as
 * hash(u32BE(j) || block_j), truncating the last, partial block.
 */
import * as nodeCrypto from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { nativeAddon } from '../native-addon.js';
import { hashInfo } from './hash.js';
import { randomBytes } from './random.js';

/** In-place diffusion of `buf` (see module comment). */
function diffuse(buf: Uint8Array, hash: string, digestSize: number): void {
  const scratch = new Uint8Array(4 + digestSize);
  const view = new DataView(scratch.buffer);
  for (let j = 0, off = 0; off < buf.length; j++, off += digestSize) {
    const len = Math.min(digestSize, buf.length - off);
    view.setUint32(0, j, false);
    scratch.set(buf.subarray(off, off + len), 4);
    const d = oneShot(hash, scratch.subarray(0, 4 + len));
    buf.set(d.subarray(0, len), off);
    d.fill(0);
  }
  scratch.fill(0);
}

// crypto.hash (node >= 20.12) avoids a Hash object per block: about twice as fast
// for these tiny inputs, and AF merging hashes 4000 stripes per keyslot try.
const fastHash = (nodeCrypto as { hash?: (alg: string, data: Uint8Array, enc: 'buffer') => Buffer }).hash;
function oneShot(hash: string, data: Uint8Array): Buffer {
  return fastHash ? fastHash(hash, data, 'buffer') : nodeCrypto.createHash(hash).update(data).digest();
}

/**
 * d_count of the chain d_0 = 0, d_{i+1} = H(d_i xor s_i) over the first `count` stripes of
 * `stripes` (a fresh buffer the caller wipes). The native module runs the whole chain in one call
 * (native/af-chain.c: 8000 hash calls a 64-byte keyslot, 10-17 ms in JavaScript on a thread that may
 * also serve requests); this loop is the reference, and the fallback for a hash OpenSSL lacks.
 */
function chain(stripes: Uint8Array, n: number, count: number, name: string, digestSize: number, useNative: boolean): Uint8Array {
  if (useNative && count > 0) {
    const d = nativeAddon()?.afChain?.(stripes, n, count, name);
    if (d !== undefined) return d;
  }
  const d = new Uint8Array(n);
  for (let i = 0; i < count; i++) {
    const s = stripes.subarray(i * n, (i + 1) * n);
    for (let k = 0; k < n; k++) d[k]! ^= s[k]!;
    diffuse(d, name, digestSize);
  }
  return d;
}

let nativeChain = true;

/** Tests only: false makes the AF functions use the JavaScript chain even when the native module is there. */
export function useNativeAfChain(on: boolean): void {
  nativeChain = on;
}

function check(keyBytes: number, stripes: number): void {
  if (!Number.isInteger(keyBytes) || keyBytes <= 0) throw new InvalidArgumentError(`Invalid AF key size ${keyBytes}.`);
  if (!Number.isInteger(stripes) || stripes < 1) throw new InvalidArgumentError(`Invalid AF stripe count ${stripes}.`);
}

/**
 * AF split with caller-supplied random stripes (`(stripes - 1) * key.length` bytes),
 * for deterministic known-answer tests. Production code uses `afSplit`.
 */
export function afSplitWithRandom(key: Uint8Array, stripes: number, hash: string, random: Uint8Array): Uint8Array {
  check(key.length, stripes);
  const { name, digestSize } = hashInfo(hash);
  const n = key.length;
  if (random.length !== (stripes - 1) * n) {
    throw new InvalidArgumentError(`AF split needs ${(stripes - 1) * n} random bytes, got ${random.length}.`);
  }
  const out = new Uint8Array(n * stripes);
  out.set(random);
  const d = chain(random, n, stripes - 1, name, digestSize, nativeChain);
  const last = out.subarray((stripes - 1) * n);
  for (let k = 0; k < n; k++) last[k] = d[k]! ^ key[k]!;
  d.fill(0);
  return out;
}

/**
 * Splits `key` into `stripes` anti-forensic stripes (`key.length * stripes` bytes).
 *
 * @example
 * const material = afSplit(volumeKey, 4000, 'sha256'); // 4000 * keyBytes bytes
 */
export function afSplit(key: Uint8Array, stripes: number, hash: string): Uint8Array {
  check(key.length, stripes);
  const random = randomBytes((stripes - 1) * key.length);
  try {
    return afSplitWithRandom(key, stripes, hash, random);
  } finally {
    random.fill(0);
  }
}

/**
 * Recovers the key from AF material (at least `keyBytes * stripes` bytes; any padding after is ignored).
 *
 * @example
 * const key = afMerge(material, 64, 4000, 'sha256');
 */
export function afMerge(material: Uint8Array, keyBytes: number, stripes: number, hash: string): Uint8Array {
  check(keyBytes, stripes);
  const { name, digestSize } = hashInfo(hash);
  if (material.length < keyBytes * stripes) {
    throw new InvalidArgumentError(`AF material is ${material.length} bytes, needs ${keyBytes * stripes}.`);
  }
  const d = chain(material, keyBytes, stripes - 1, name, digestSize, nativeChain);
  const last = material.subarray((stripes - 1) * keyBytes, stripes * keyBytes);
  for (let k = 0; k < keyBytes; k++) d[k]! ^= last[k]!;
  return d;
}

/** Bytes of AF material for a key: `keyBytes * stripes`. */
export function afSplitSize(keyBytes: number, stripes: number): number {
  return keyBytes * stripes;
}
