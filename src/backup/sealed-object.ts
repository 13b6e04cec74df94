/**
 * The sealed object: how every chunk and manifest is stored (pure: bytes in, bytes out).
 * The plaintext is compressed with zstd when that saves at least 1/32 of it, then sealed with
 * AES-256-GCM (NIST SP 800-38D) under a fresh random 96-bit nonce. The additional data is
 * the 24-byte header plus the object's name (a chunk id, a backup id), so an object moved
 * under another name, or a header with a changed flag or length, fails authentication.
 *
 * | offset | size | field                                                     |
 * |--------|------|-----------------------------------------------------------|
 * | 0      | 4    | magic `BCB1`                                              |
 * | 4      | 1    | kind: 1 chunk, 2 manifest                                 |
 * | 5      | 1    | compression: 0 none, 1 zstd (RFC 8878 frame)              |
 * | 6      | 2    | reserved, 0                                               |
 * | 8      | 4    | plaintext length before compression (u32 big-endian)     |
 * | 12     | 12   | GCM nonce                                                 |
 * | 24     | n    | ciphertext (of the compressed or raw plaintext)           |
 * | 24+n   | 16   | GCM tag                                                   |
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Compressor, Decompressor } from 'zstd-napi';
import { IntegrityError } from '../errors.js';
import type { SecretBytes } from '../secret.js';
import { copyBytes } from '../native-addon.js';

export const SEALED_MAGIC = 'BCB1';
export const SEALED_HEADER_BYTES = 24;
export const SEALED_TAG_BYTES = 16;
export const SEALED_OVERHEAD = SEALED_HEADER_BYTES + SEALED_TAG_BYTES;

export const OBJECT_KIND = { chunk: 1, manifest: 2 } as const;
export type ObjectKind = keyof typeof OBJECT_KIND;

export const COMPRESSION = { none: 0, zstd: 1 } as const;

/** zstd level 1: on this data path compression must keep up with hashing and AES-GCM. */
export const ZSTD_LEVEL = 1;

let compressor: Compressor | undefined;
let decompressor: Decompressor | undefined;

function zstdCompress(plain: Uint8Array): Uint8Array {
  if (!compressor) {
    compressor = new Compressor();
    compressor.setParameters({ compressionLevel: ZSTD_LEVEL, checksumFlag: false, contentSizeFlag: true });
  }
  return compressor.compress(plain);
}

function zstdDecompress(packed: Uint8Array): Uint8Array {
  decompressor ??= new Decompressor();
  return decompressor.decompress(packed);
}

export interface SealOptions {
  /** Try zstd (default true). */
  compress?: boolean;
}

const SAMPLE_BYTES = 16 * 1024;

/**
 * Whether zstd is worth running on `plain`: for more than 64 KiB, three 16 KiB samples (head, middle,
 * tail) are compressed first and the whole only when one of them shrinks by 1/32. Ciphertext (a
 * LUKS volume) and random data then cost three small attempts instead of a full pass.
 */
function worthCompressing(plain: Uint8Array): boolean {
  if (plain.length <= 4 * SAMPLE_BYTES) return true;
  for (const at of [0, (plain.length - SAMPLE_BYTES) >>> 1, plain.length - SAMPLE_BYTES]) {
    if (zstdCompress(plain.subarray(at, at + SAMPLE_BYTES)).length <= SAMPLE_BYTES - (SAMPLE_BYTES >>> 5)) return true;
  }
  return false;
}

/** The body to seal: zstd-compressed when that saves 1/32, else `plain` itself. */
function packBody(plain: Uint8Array, options: SealOptions): { body: Uint8Array; compression: number } {
  if (plain.length > 0xffffffff) throw new RangeError('a sealed object holds at most 4 GiB - 1');
  if (options.compress !== false && plain.length >= 64 && worthCompressing(plain)) {
    const packed = zstdCompress(plain);
    if (packed.length <= plain.length - (plain.length >>> 5)) return { body: packed, compression: COMPRESSION.zstd };
  }
  return { body: plain, compression: COMPRESSION.none };
}

export interface SealResult {
  bytes: Uint8Array;
  compressed: boolean;
}

function header(kind: ObjectKind, compression: number, plainLength: number, nonce: Uint8Array): Uint8Array {
  const h = new Uint8Array(SEALED_HEADER_BYTES);
  h.set(Buffer.from(SEALED_MAGIC, 'latin1'), 0);
  h[4] = OBJECT_KIND[kind];
  h[5] = compression;
  new DataView(h.buffer).setUint32(8, plainLength);
  h.set(nonce, 12);
  return h;
}

/** Compresses (when it helps) and seals `plain` as object `name` of `kind`. */
export function sealObject(kind: ObjectKind, name: string, plain: Uint8Array, key: SecretBytes, options: SealOptions = {}): SealResult {
  const { body, compression } = packBody(plain, options);
  const nonce = randomBytes(12);
  const h = header(kind, compression, plain.length, nonce);
  const cipher = createCipheriv('aes-256-gcm', key.expose(), nonce);
  cipher.setAAD(Buffer.concat([h, Buffer.from(name, 'utf8')]));
  const out = new Uint8Array(SEALED_OVERHEAD + body.length);
  out.set(h, 0);
  const n = cipher.update(body).copy(out, SEALED_HEADER_BYTES);
  cipher.final();
  out.set(cipher.getAuthTag(), SEALED_HEADER_BYTES + n);
  return { bytes: out, compressed: compression === COMPRESSION.zstd };
}

/**
 * `sealObject` writing into `out` (at least `SEALED_OVERHEAD` + the plaintext's length bytes) instead
 * of new buffers: the sealing workers put the object straight into the memory it is stored from.
 * Same bytes as `sealObject` for the same nonce.
 */
export function sealObjectInto(kind: ObjectKind, name: string, plain: Uint8Array, key: SecretBytes, out: Uint8Array, options: SealOptions = {}): SealResult & { length: number } {
  const { body, compression } = packBody(plain, options);
  if (out.length < SEALED_OVERHEAD + body.length) throw new RangeError(`sealObjectInto: ${out.length} bytes of room for a ${SEALED_OVERHEAD + body.length}-byte object`);
  const nonce = randomBytes(12);
  const h = header(kind, compression, plain.length, nonce);
  const cipher = createCipheriv('aes-256-gcm', key.expose(), nonce);
  cipher.setAAD(Buffer.concat([h, Buffer.from(name, 'utf8')]));
  out.set(h, 0);
  const ct = cipher.update(body);
  copyBytes(out, SEALED_HEADER_BYTES, ct);
  cipher.final();
  const length = SEALED_HEADER_BYTES + ct.length + SEALED_TAG_BYTES;
  out.set(cipher.getAuthTag(), SEALED_HEADER_BYTES + ct.length);
  return { bytes: out.subarray(0, length), compressed: compression === COMPRESSION.zstd, length };
}

/**
 * `openObject` writing the plaintext into `out` (at least the header's plaintext length); returns
 * its length. Throws IntegrityError as `openObject` does.
 */
export function openObjectInto(kind: ObjectKind, name: string, bytes: Uint8Array, key: SecretBytes, out: Uint8Array): number {
  const plain = authenticateAndOpen(kind, name, bytes, key, out.length);
  copyBytes(out, 0, plain);
  return plain.length;
}

/** The plaintext of sealed object `name` (at most `room` bytes), or an IntegrityError. */
function authenticateAndOpen(kind: ObjectKind, name: string, bytes: Uint8Array, key: SecretBytes, room = Infinity): Uint8Array {
  const what = `${kind} ${name}`;
  const h = decodeSealedHeader(bytes, what);
  if (h.kind !== OBJECT_KIND[kind]) throw new IntegrityError(`${what}: object kind ${h.kind} is not a ${kind}.`);
  if (h.compression !== COMPRESSION.none && h.compression !== COMPRESSION.zstd) throw new IntegrityError(`${what}: unknown compression ${h.compression}.`);
  if (h.plainLength > room) throw new IntegrityError(`${what}: ${h.plainLength} bytes do not fit a chunk.`);
  const tagAt = bytes.length - SEALED_TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', key.expose(), bytes.subarray(12, 24));
  decipher.setAAD(Buffer.concat([bytes.subarray(0, SEALED_HEADER_BYTES), Buffer.from(name, 'utf8')]));
  decipher.setAuthTag(bytes.subarray(tagAt));
  let body: Buffer;
  try {
    // AES-GCM's final() returns no bytes: the whole plaintext comes from update().
    body = decipher.update(bytes.subarray(SEALED_HEADER_BYTES, tagAt));
    decipher.final();
  } catch {
    throw new IntegrityError(`${what}: authentication failed (the object was changed, or sealed under another key).`);
  }
  let plain: Uint8Array = body;
  if (h.compression === COMPRESSION.zstd) {
    try {
      plain = zstdDecompress(body);
    } catch {
      throw new IntegrityError(`${what}: the zstd frame does not decompress.`);
    }
  }
  if (plain.length !== h.plainLength) throw new IntegrityError(`${what}: ${plain.length} bytes where the header says ${h.plainLength}.`);
  return plain;
}

/** The header fields of a sealed object (no authentication yet: `openObject` authenticates). */
export interface SealedHeader {
  kind: number;
  compression: number;
  plainLength: number;
}

export function decodeSealedHeader(bytes: Uint8Array, what: string): SealedHeader {
  if (bytes.length < SEALED_OVERHEAD || Buffer.from(bytes.subarray(0, 4)).toString('latin1') !== SEALED_MAGIC) {
    throw new IntegrityError(`${what}: not a sealed backup object (bad magic or too short).`);
  }
  return { kind: bytes[4]!, compression: bytes[5]!, plainLength: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8) };
}

/**
 * Authenticates and opens object `name`; throws IntegrityError for any changed byte, a wrong name
 * or kind, or a key that did not seal it.
 */
export function openObject(kind: ObjectKind, name: string, bytes: Uint8Array, key: SecretBytes): Uint8Array {
  return authenticateAndOpen(kind, name, bytes, key);
}

/**
 * `sealObject` with the AES-GCM pass on WebCrypto (`crypto.subtle`), which runs it on libuv's thread
 * pool: several chunks are sealed at once, next to the main thread's hashing and I/O. Same bytes
 * out (WebCrypto appends the tag to the ciphertext, which is this layout).
 */
export async function sealObjectAsync(kind: ObjectKind, name: string, plain: Uint8Array, key: CryptoKey, options: SealOptions = {}): Promise<SealResult> {
  const { body, compression } = packBody(plain, options);
  const nonce = randomBytes(12);
  const h = header(kind, compression, plain.length, nonce);
  const sealed = new Uint8Array(
    await globalThis.crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce as Uint8Array<ArrayBuffer>, additionalData: Buffer.concat([h, Buffer.from(name, 'utf8')]) as Uint8Array<ArrayBuffer>, tagLength: 128 }, key, body as Uint8Array<ArrayBuffer>),
  );
  const out = new Uint8Array(SEALED_HEADER_BYTES + sealed.length);
  out.set(h, 0);
  out.set(sealed, SEALED_HEADER_BYTES);
  return { bytes: out, compressed: compression === COMPRESSION.zstd };
}

/** `openObject` with the AES-GCM pass on WebCrypto (see `sealObjectAsync`). */
export async function openObjectAsync(kind: ObjectKind, name: string, bytes: Uint8Array, key: CryptoKey): Promise<Uint8Array> {
  const what = `${kind} ${name}`;
  const h = decodeSealedHeader(bytes, what);
  if (h.kind !== OBJECT_KIND[kind]) throw new IntegrityError(`${what}: object kind ${h.kind} is not a ${kind}.`);
  if (h.compression !== COMPRESSION.none && h.compression !== COMPRESSION.zstd) throw new IntegrityError(`${what}: unknown compression ${h.compression}.`);
  const head = bytes.subarray(0, SEALED_HEADER_BYTES);
  let body: Uint8Array;
  try {
    body = new Uint8Array(
      await globalThis.crypto.subtle.decrypt(
        { name: 'AES-GCM', iv: bytes.subarray(12, 24) as Uint8Array<ArrayBuffer>, additionalData: Buffer.concat([head, Buffer.from(name, 'utf8')]) as Uint8Array<ArrayBuffer>, tagLength: 128 },
        key,
        bytes.subarray(SEALED_HEADER_BYTES) as Uint8Array<ArrayBuffer>,
      ),
    );
  } catch {
    throw new IntegrityError(`${what}: authentication failed (the object was changed, or sealed under another key).`);
  }
  let plain = body;
  if (h.compression === COMPRESSION.zstd) {
    try {
      plain = zstdDecompress(body);
    } catch {
      throw new IntegrityError(`${what}: the zstd frame does not decompress.`);
    }
  }
  if (plain.length !== h.plainLength) throw new IntegrityError(`${what}: ${plain.length} bytes where the header says ${h.plainLength}.`);
  return plain;
}
