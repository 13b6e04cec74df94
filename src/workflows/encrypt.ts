/**
 * In-place encryption of a plain file or block device into LUKS2 (cryptsetup reencrypt
 * --encrypt): opens it for writing and runs the engine (src/luks/reencrypt/encrypt.ts) with the
 * sector cipher on the worker pool.
 *
 * @example
 * const report = await encryptVolume('disk.img', { passphrases: [pass] }); // grows the file by 16 MiB
 */
import { FileDevice } from '../devices/file-device.js';
import { decodeReencryptState } from '../formats/luks2/reencrypt-state.js';
import { detectFormat } from '../images/detect.js';
import { readLuks2Headers } from '../luks/luks2-io.js';
import { type EncryptCipherFactory, type EncryptOptions, type EncryptReport } from '../luks/reencrypt/encrypt.js';
import { encryptLuks, luks1EncryptionRecorded } from '../luks/reencrypt/encrypt-luks1.js';
import type { ZoneCipher, ZoneSide } from '../luks/reencrypt/engine.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';
import { poolChecksums, poolSide, poolTransform } from './pool-zone-ciphers.js';

export type { EncryptReport } from '../luks/reencrypt/encrypt.js';

/** Encryption on `pool`: each piece of a zone is one job. */
export function poolEncryptCipher(pool: CryptoPool): EncryptCipherFactory {
  return (side) => {
    const to = poolSide(pool, side);
    return { encrypt: poolTransform(pool, undefined, to), close: async () => pool.dropCipher(to.cipher) };
  };
}

/** Encrypt-only zone cipher for the re-key engine (detached header), with checksums, on `pool`. */
export function poolPlainZoneCipher(pool: CryptoPool): (to: ZoneSide) => ZoneCipher {
  return (to) => {
    const enc = poolEncryptCipher(pool)(to);
    return { transform: enc.encrypt, digest: poolChecksums(pool), close: enc.close };
  };
}

export interface EncryptVolumeOptions extends Omit<EncryptOptions, 'headerDevice' | 'cipherFactory'> {
  /** Detached header file (cryptsetup --header). */
  header?: string;
  /** Crypto worker threads (0: the calling thread); default one per core. */
  workers?: number;
  /** The format to end with (default luks2); a recorded encryption to LUKS1 ends as LUKS1 anyway. */
  type?: 'luks1' | 'luks2';
}

/** Encrypts (or resumes encrypting) the plain file or device at `path` in place. */
export async function encryptVolume(path: string, options: EncryptVolumeOptions): Promise<EncryptReport> {
  const file = await FileDevice.open(path);
  let header: FileDevice | undefined;
  const workers = options.workers ?? defaultWorkerCount();
  const pool = workers > 0 ? CryptoPool.create(workers) : undefined;
  try {
    // A detached header file is created when missing (as cryptsetup does).
    if (options.header !== undefined) header = await FileDevice.open(options.header, { create: true });
    const { header: _h, workers: _w, ...rest } = options;
    return await encryptLuks(file, {
      ...rest,
      ...(header ? { headerDevice: header } : {}),
      ...(pool ? { cipherFactory: poolEncryptCipher(pool), plainZoneCipher: poolPlainZoneCipher(pool) } : {}),
    });
  } finally {
    await pool?.close();
    await header?.close();
    await file.close();
  }
}

/**
 * True when `path` holds a recorded in-place encryption (mode encrypt, or any phase of one to
 * LUKS1: src/luks/reencrypt/encrypt-luks1.ts), or — with `resumeOnly` —
 * is not LUKS at all (a start interrupted while the header was written: the engine looks for
 * the header's copy). `reencrypt --resume-only` then goes to `encryptVolume`.
 */
export async function encryptionRecorded(path: string, resumeOnly: boolean, header?: string): Promise<boolean> {
  let file: FileDevice;
  try {
    file = await FileDevice.open(header ?? path, { readOnly: true });
  } catch {
    return false;
  }
  try {
    const format = await detectFormat(file);
    if (format === 'raw') return resumeOnly;
    if (await luks1EncryptionRecorded(file, header === undefined ? file.size : undefined)) return true;
    if (format !== 'luks2') return false;
    // A detached header file is not the data device: its size bounds no segment.
    const { state } = await readLuks2Headers(file, header === undefined ? file.size : undefined);
    return decodeReencryptState(state.metadata)?.keyslot.mode === 'encrypt';
  } catch {
    return false;
  } finally {
    await file.close();
  }
}
