/**
 * The per-chunk work of the data pipeline, as plain functions over plain values so the same
 * code runs inline and inside a worker thread: decrypt with the source key, flag all-zero
 * blocks of the plaintext, encrypt with the target key.
 */
import { parseEncryption } from '../crypto/cipher-spec.js';
import { createSectorCipher, type SectorCipher } from '../crypto/sector-cipher.js';
import { blockDigestsInto } from '../crypto/hash.js';

/** What a worker needs to key a cipher (the key bytes travel separately). */
export interface CipherParams {
  encryption: string;
  keyBytes: number;
  sectorSize: number;
}

/** One chunk's work. IVs are in 512-byte units (docs/architecture.md). */
export interface ChunkJob {
  /** Bytes of the buffer that carry data (a multiple of each cipher's sector size). */
  length: number;
  /**
   * First of all, hash each `block` bytes of the input (e.g. the old ciphertext, for a
   * reencryption's checksum resilience) into `shared` from `offset`, digest after digest.
   */
  checksum?: { algorithm: string; block: number; shared: SharedArrayBuffer; offset: number };
  decrypt?: { cipher: number; iv: number; length: number };
  /** Block size for zero detection on the plaintext (after decrypt, before encrypt); 0 = none. */
  zeroBlock: number;
  encrypt?: { cipher: number; iv: number; length: number };
}

export interface ChunkResult {
  /** One flag per `zeroBlock` of `length` (last block may be short): 1 = all zeros. */
  zeros?: Uint8Array;
  /** Every block was zero (no need to look at `zeros`). */
  allZero?: boolean;
}

/** A table of keyed ciphers, addressed by number. */
export class CipherTable {
  readonly #ciphers = new Map<number, SectorCipher>();

  add(id: number, params: CipherParams, key: Uint8Array): void {
    const spec = parseEncryption(params.encryption, params.keyBytes);
    this.#ciphers.set(id, createSectorCipher(spec, key, params.sectorSize));
  }

  get(id: number): SectorCipher {
    const c = this.#ciphers.get(id);
    if (!c) throw new Error(`cipher ${id} is not registered`);
    return c;
  }

  drop(id: number): void {
    this.#ciphers.get(id)?.wipe();
    this.#ciphers.delete(id);
  }

  dropAll(): void {
    for (const id of [...this.#ciphers.keys()]) this.drop(id);
  }
}

const ZERO_PAGE = Buffer.alloc(64 * 1024);

/** True when every byte of `buf` is zero (memcmp against a static zero page). */
export function isAllZero(buf: Uint8Array): boolean {
  for (let pos = 0; pos < buf.length; pos += ZERO_PAGE.length) {
    const n = Math.min(ZERO_PAGE.length, buf.length - pos);
    if (Buffer.compare(Buffer.from(buf.buffer, buf.byteOffset + pos, n), n === ZERO_PAGE.length ? ZERO_PAGE : ZERO_PAGE.subarray(0, n)) !== 0) {
      return false;
    }
  }
  return true;
}

/** Flags the all-zero blocks of `buf` (block size <= 64 KiB). */
export function zeroBlocks(buf: Uint8Array, block: number): { zeros: Uint8Array; allZero: boolean } {
  const count = Math.ceil(buf.length / block);
  const zeros = new Uint8Array(count);
  let all = true;
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.length);
  const zero = ZERO_PAGE.subarray(0, block);
  // Quick reject on a block's first and last word: data blocks almost always differ there,
  // which saves the (comparatively costly) compare call for every block of typical data.
  const words = buf.byteOffset % 4 === 0 && block % 4 === 0 ? new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2) : null;
  for (let i = 0; i < count; i++) {
    const start = i * block;
    const end = Math.min(start + block, buf.length);
    if (words && end - start === block && (words[start >>> 2] !== 0 || words[(end >>> 2) - 1] !== 0)) {
      all = false;
      continue;
    }
    const isZero = end - start === block ? view.compare(zero, 0, block, start, end) === 0 : isAllZero(buf.subarray(start, end));
    zeros[i] = isZero ? 1 : 0;
    if (!isZero) all = false;
  }
  return { zeros, allZero: all };
}

/** Hashes each block of `buf` into the shared output (see `ChunkJob.checksum`). */
function blockDigests(buf: Uint8Array, c: NonNullable<ChunkJob['checksum']>): void {
  blockDigestsInto(buf, c.block, c.algorithm, new Uint8Array(c.shared, c.offset));
}

/** Runs one job on `buf` in place. */
export function runChunkJob(table: CipherTable, buf: Uint8Array, job: ChunkJob): ChunkResult {
  if (job.checksum) blockDigests(buf.subarray(0, job.length), job.checksum);
  if (job.decrypt) table.get(job.decrypt.cipher).decrypt(buf.subarray(0, job.decrypt.length), job.decrypt.iv);
  let result: ChunkResult = {};
  if (job.zeroBlock > 0) result = zeroBlocks(buf.subarray(0, job.length), job.zeroBlock);
  if (job.encrypt) table.get(job.encrypt.cipher).encrypt(buf.subarray(0, job.encrypt.length), job.encrypt.iv);
  return result;
}
