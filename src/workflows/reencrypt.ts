/**
 * In-place reencryption of a volume file or block device: opens it (and a detached header)
 * for writing and runs the LUKS2 engine (src/luks/reencrypt/engine.ts) with the zone ciphers on
 * the worker pool, so decryption under the old key and encryption under the new one of each
 * hot zone are spread over the cores in 2 MiB pieces (src/workflows/pool-zone-ciphers.ts).
 *
 * @example
 * const report = await reencryptVolume('vol.img', { passphrases: [pass], resilience: 'checksum' });
 */
import { FileDevice } from '../devices/file-device.js';
import { detectFormat } from '../images/detect.js';
import { InvalidArgumentError, UnknownFormatError, UnsupportedError } from '../errors.js';
import { isLuks1Reencryption, reencryptLuks1 } from '../luks/reencrypt/luks1.js';
import { reencryptLuks2, type ReencryptOptions, type ReencryptReport, type ZoneCipherFactory } from '../luks/reencrypt/engine.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';
import { poolChecksums, poolSide, poolTransform } from './pool-zone-ciphers.js';

export type { ReencryptReport } from '../luks/reencrypt/engine.js';

/** Zone ciphers on `pool`: every piece of a zone is one job that decrypts and re-encrypts it in place. */
export function poolZoneCipher(pool: CryptoPool): ZoneCipherFactory {
  return (from, to) => {
    const a = poolSide(pool, from);
    const b = poolSide(pool, to);
    return {
      transform: poolTransform(pool, a, b),
      digest: poolChecksums(pool),
      close: async () => {
        pool.dropCipher(a.cipher);
        pool.dropCipher(b.cipher);
      },
    };
  };
}

export interface ReencryptVolumeOptions extends Omit<ReencryptOptions, 'headerDevice' | 'zoneCipher'> {
  /** Detached header file (cryptsetup --header). */
  header?: string;
  /** Crypto worker threads (0: the calling thread); default one per core. */
  workers?: number;
}

/** Re-encrypts (or resumes re-encrypting) the LUKS2 volume at `path` in place. */
export async function reencryptVolume(path: string, options: ReencryptVolumeOptions): Promise<ReencryptReport> {
  // A recorded in-place encryption (cryptsetup's or ours) is resumed by the encrypt engine.
  const { encryptionRecorded, encryptVolume } = await import('./encrypt.js');
  if (await encryptionRecorded(path, options.resumeOnly === true && options.header === undefined, options.header)) {
    const { keyslot: _k, cipher: _c, keySizeBits: _ks, sectorSize: _s, ...rest } = options;
    return encryptVolume(path, rest);
  }
  const file = await FileDevice.open(path);
  let header: FileDevice | undefined;
  const pool = CryptoPool.create(options.workers ?? defaultWorkerCount());
  try {
    if (options.header !== undefined) header = await FileDevice.open(options.header);
    const format = await detectFormat(header ?? file);
    // LUKS1 (or one left in its temporary LUKS2 phase): converted to LUKS2, re-keyed, converted back.
    if (format === 'luks1' || (format === 'luks2' && header === undefined && (await isLuks1Reencryption(file)))) {
      const { header: _h, workers: _w, ...luks1Options } = options;
      return await reencryptLuks1(file, { ...luks1Options, ...(header ? { headerDevice: header } : {}), zoneCipher: poolZoneCipher(pool) });
    }
    if (format !== 'luks2') {
      if (format === 'raw') throw new InvalidArgumentError(`${path} is not a LUKS volume (encrypt it in place with: brickcrypt reencrypt --encrypt --type luks2).`);
      throw new UnknownFormatError(`${path} holds ${format} data, not a LUKS2 volume.`);
    }
    const { header: _h, workers: _w, ...rest } = options;
    return await reencryptLuks2(file, { ...rest, ...(header ? { headerDevice: header } : {}), zoneCipher: poolZoneCipher(pool) });
  } finally {
    await pool.close();
    await header?.close();
    await file.close();
  }
}
