/**
 * The reencryption engines' ciphers on the crypto worker pool: a zone is cut into 2 MiB pieces,
 * each one job, so decryption under the old key, encryption under the new one and the checksums
 * of the hot zone are spread over the cores. Every mode (re-key, encrypt, decrypt, plain ->
 * LUKS2) is a choice of the two sides.
 *
 * @example
 * const to = poolSide(pool, { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 4096, ivTweak: 0, key });
 * await poolTransform(pool, undefined, to)(zone, zoneOffset); // encrypt only
 * pool.dropCipher(to.cipher);
 */
import type { ZoneCipher, ZoneSide } from '../luks/reencrypt/engine.js';
import type { CryptoPool } from './worker-pool.js';

/** Piece handed to one worker (a multiple of every sector size). */
export const PIECE_BYTES = 2 * 1024 * 1024;

/** A cipher registered on the pool, with the IV offset of its segment. */
export interface PoolSide {
  cipher: number;
  ivTweak: number;
}

/** Registers `side`'s key on `pool` (drop it with `pool.dropCipher(side.cipher)`). */
export function poolSide(pool: CryptoPool, side: Pick<ZoneSide, 'encryption' | 'keyBytes' | 'sectorSize' | 'ivTweak' | 'key'>): PoolSide {
  return { cipher: pool.addCipher({ encryption: side.encryption, keyBytes: side.keyBytes, sectorSize: side.sectorSize }, side.key), ivTweak: side.ivTweak };
}

/**
 * Decrypts with `from` (if given), then encrypts with `to` (if given), in place; `pos` is the
 * byte position of `data` in the payload (IV = position / 512 + the side's tweak).
 */
export function poolTransform(pool: CryptoPool, from: PoolSide | undefined, to: PoolSide | undefined): (data: Uint8Array, pos: number) => Promise<void> {
  return async (data, pos) => {
    const jobs: Array<Promise<unknown>> = [];
    for (let p = 0; p < data.length; p += PIECE_BYTES) {
      const length = Math.min(PIECE_BYTES, data.length - p);
      const iv = (side: PoolSide) => ({ cipher: side.cipher, iv: (pos + p) / 512 + side.ivTweak, length });
      jobs.push(pool.runShared(data.subarray(p, p + length), { length, zeroBlock: 0, ...(from ? { decrypt: iv(from) } : {}), ...(to ? { encrypt: iv(to) } : {}) }));
    }
    await Promise.all(jobs);
  };
}

/** The hot zone's block checksums (resilience `checksum`) on `pool`. */
export function poolChecksums(pool: CryptoPool): ZoneCipher['digest'] {
  return async (data, sums) => {
    const jobs: Array<Promise<unknown>> = [];
    const size = sums.out.length / (data.length / sums.block);
    for (let p = 0; p < data.length; p += PIECE_BYTES) {
      const length = Math.min(PIECE_BYTES, data.length - p);
      const checksum = { algorithm: sums.hash, block: sums.block, shared: sums.out.buffer as SharedArrayBuffer, offset: sums.out.byteOffset + (p / sums.block) * size };
      jobs.push(pool.runShared(data.subarray(p, p + length), { length, zeroBlock: 0, checksum }));
    }
    await Promise.all(jobs);
  };
}
