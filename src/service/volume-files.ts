/**
 * Opening and laying out the volume files the service keeps under `STATE/volumes/`: a LUKS
 * volume unlocked with its managed key (the caller's identity asks the key manager), a raw
 * volume as a plain file. Everything here is a thin use of the LUKS engine and the devices.
 */
import { FileDevice } from '../devices/file-device.js';
import { EncryptedDevice } from '../devices/encrypted-device.js';
import { LuksVolume, plannedDataOffset } from '../luks/index.js';
import type { FormatOptions } from '../luks/options.js';
import type { BlockDevice } from '../block-device.js';
import type { CallerIdentity, KeyManager } from '../keys/key-manager.js';
import { passphraseForLuks } from '../keys/luks-passphrase.js';
import { InvalidArgumentError } from '../errors.js';
import type { Passphrase } from '../secret.js';
import type { VolumeFormat } from './state-db.js';
import type { CryptoPool } from '../workflows/worker-pool.js';

/** LUKS options a request may set (cryptsetup luksFormat's names, snake case). */
export interface LuksRequestOptions {
  cipher?: string;
  key_size?: number;
  sector_size?: 512 | 4096;
  pbkdf?: 'pbkdf2' | 'argon2i' | 'argon2id';
  pbkdf_iterations?: number;
  pbkdf_memory_kib?: number;
  pbkdf_parallel?: number;
  iter_time_ms?: number;
}

export function formatOptionsOf(type: 'luks1' | 'luks2', o: LuksRequestOptions = {}): Omit<FormatOptions, 'passphrase'> {
  const f: Omit<FormatOptions, 'passphrase'> = { type };
  if (o.cipher !== undefined) f.cipher = o.cipher;
  if (o.key_size !== undefined) f.keySizeBits = o.key_size;
  if (o.sector_size !== undefined) {
    if (type === 'luks1' && o.sector_size !== 512) throw new InvalidArgumentError('LUKS1 supports only 512-byte sectors.');
    f.sectorSize = o.sector_size;
  } else if (type === 'luks2') f.sectorSize = 4096;
  if (o.pbkdf !== undefined) {
    if (type === 'luks1' && o.pbkdf !== 'pbkdf2') throw new InvalidArgumentError('LUKS1 keyslots use pbkdf2 only.');
    f.pbkdf = o.pbkdf;
  }
  if (o.pbkdf_iterations !== undefined) f.iterations = o.pbkdf_iterations;
  if (o.pbkdf_memory_kib !== undefined) f.memoryKiB = o.pbkdf_memory_kib;
  if (o.pbkdf_parallel !== undefined) f.parallel = o.pbkdf_parallel;
  if (o.iter_time_ms !== undefined) f.iterTimeMs = o.iter_time_ms;
  if (f.iterations !== undefined && f.pbkdf === undefined && type === 'luks2') f.pbkdf = 'pbkdf2';
  return f;
}

/** Reads managed key `id` as the caller and returns its LUKS passphrase (os-brick's hex form). */
export async function passphraseOfKey(km: KeyManager, caller: CallerIdentity, id: string): Promise<Passphrase> {
  const object = await km.get(caller, id);
  try {
    return passphraseForLuks(object);
  } finally {
    object.secret.wipe();
  }
}

/** Creates a new AES-256 key as the caller: its id and passphrase (the bytes are handed out only now). */
export async function newKeyPassphrase(km: KeyManager, caller: CallerIdentity, name: string): Promise<{ id: string; passphrase: Passphrase }> {
  const { id, key } = await km.createKey(caller, { algorithm: 'aes', bitLength: 256, name });
  try {
    const object = { id, type: 'symmetric' as const, created: new Date().toISOString(), owner: caller, consumers: [], secret: key };
    return { id, passphrase: passphraseForLuks(object) };
  } finally {
    key.wipe();
  }
}

/** Creates `path` (must not exist) as a `format` volume of `size` usable bytes; the passphrase is the caller's to wipe. */
export async function createVolumeFile(
  path: string,
  format: VolumeFormat,
  size: number,
  options: { passphrase?: Passphrase; luks?: LuksRequestOptions },
): Promise<{ cipher: string | null }> {
  if (format === 'raw') {
    const dev = await FileDevice.open(path, { create: true, size });
    await dev.sync();
    await dev.close();
    return { cipher: null };
  }
  const fo = formatOptionsOf(format, options.luks);
  const offset = plannedDataOffset(fo);
  const sector = fo.sectorSize ?? 512;
  const payload = Math.ceil(size / sector) * sector;
  const dev = await FileDevice.open(path, { create: true, size: offset + payload });
  try {
    const { volume, key } = await LuksVolume.format(dev, { ...fo, passphrase: options.passphrase! });
    key.wipe();
    await dev.sync();
    return { cipher: volume.encryption };
  } finally {
    await dev.close();
  }
}

/** An open volume's plaintext view. */
export interface OpenVolume {
  device: BlockDevice;
  close(): Promise<void>;
}

/**
 * Opens volume file `path` for plaintext I/O (LUKS with `passphrase`, which is wiped here).
 * With `pool`, large reads and writes are decrypted and encrypted by its worker threads, so the
 * cipher work of a copy does not hold up the API's event loop.
 */
export async function openVolumeFile(path: string, format: VolumeFormat, options: { passphrase?: Passphrase; readOnly?: boolean; pool?: CryptoPool } = {}): Promise<OpenVolume> {
  const file = await FileDevice.open(path, { readOnly: options.readOnly === true });
  if (format === 'raw') return { device: file, close: () => file.close() };
  try {
    const volume = await LuksVolume.open(file, { readOnly: options.readOnly === true });
    volume.assertPayloadAccess();
    const { key } = await volume.unlock(options.passphrase!, { forWrite: options.readOnly !== true });
    let device: EncryptedDevice;
    try {
      // The encrypted view owns the key from here and wipes it on close.
      const params = { encryption: volume.encryption, keyBytes: volume.keyBytes, sectorSize: volume.sectorSize };
      const cryptoOffload = options.pool?.sectorCrypto(params, key.expose());
      device = EncryptedDevice.open(file, volume, key, { readOnly: options.readOnly === true, ...(cryptoOffload ? { cryptoOffload } : {}) });
    } catch (err) {
      key.wipe();
      throw err;
    }
    return {
      device,
      close: async () => {
        await device.close();
        await file.close();
      },
    };
  } catch (err) {
    await file.close();
    throw err;
  } finally {
    options.passphrase?.wipe();
  }
}

/** `"8M"` or a number of bytes. */
export function parseVolumeSize(size: number | string): number {
  if (typeof size === 'number') {
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidArgumentError(`size ${size} is not a positive whole number of bytes.`);
    return size;
  }
  const m = /^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(size);
  if (!m) throw new InvalidArgumentError(`size '${size}' is not a size (e.g. 4096, 512K, 8M, 2G).`);
  const mult: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };
  const n = Number(m[1]) * mult[m[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(n) || n <= 0) throw new InvalidArgumentError(`size '${size}' is out of range.`);
  return n;
}
