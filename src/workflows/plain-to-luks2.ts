/**
 * In-place conversion of a plain dm-crypt volume (no header: os-brick's CryptsetupEncryptor,
 * `cryptsetup open --type plain`) into LUKS2, which cryptsetup cannot do: the in-place encryption
 * engine (src/luks/reencrypt/encrypt.ts, datashift, the file grows by the header) runs with a
 * cipher that decrypts each piece under the plain key in memory and encrypts it under the new
 * volume key, so no plaintext ever reaches the disk (the moved first segment is copied as plain
 * ciphertext). While it runs, the header carries the mandatory requirement
 * `brickcrypt-encrypt-source` and a token with the plain parameters and a PBKDF2 check value
 * of the plain key: cryptsetup refuses the volume (it would read ciphertext as plaintext), and
 * a resume must give the same plain parameters and key.
 *
 * @example
 * const key = await readPlainVolumeKey(params, { keyFile: 'plain.key' });
 * await encryptPlainVolume('vol.img', { plain: params, plainKey: key, passphrases: [pass] });
 */
import { pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { FileDevice } from '../devices/file-device.js';
import { InvalidArgumentError, WrongPassphraseError } from '../errors.js';
import { parseEncryption } from '../crypto/cipher-spec.js';
import { createSectorCipher } from '../crypto/sector-cipher.js';
import type { Luks2Metadata } from '../formats/luks2/metadata.js';
import { ENCRYPT_SOURCE_TOKEN_TYPE, encryptLuks2, type EncryptCipherFactory, type EncryptReport, type EncryptSource } from '../luks/reencrypt/encrypt.js';
import { plainGeometry, type PlainParams } from '../plain/plain-volume.js';
import type { VolumeKey } from '../secret.js';
import type { EncryptVolumeOptions } from './encrypt.js';
import { CryptoPool, defaultWorkerCount } from './worker-pool.js';
import { poolSide, poolTransform } from './pool-zone-ciphers.js';

/** The key check value: PBKDF2-SHA256 of the plain key (a full-entropy key needs no slow KDF). */
const CHECK_ITERATIONS = 1000;

export interface EncryptPlainOptions extends Omit<EncryptVolumeOptions, 'header'> {
  /** The plain volume's parameters (`--src-cipher`, `--src-key-size`, `--src-skip`, ...). */
  plain: PlainParams;
  /** Its volume key (the caller keeps and wipes it). */
  plainKey: VolumeKey;
}

type Token = Luks2Metadata['tokens'][string];

function keyCheck(key: Uint8Array, salt: Buffer): Buffer {
  return pbkdf2Sync(key, salt, CHECK_ITERATIONS, 32, 'sha256');
}

/** The source description recorded in the header, and the check a resume runs against it. */
export function plainSource(plain: PlainParams, key: VolumeKey): EncryptSource {
  const salt = randomBytes(32);
  const token = {
    type: ENCRYPT_SOURCE_TOKEN_TYPE,
    keyslots: [],
    scheme: 'plain',
    cipher: plain.encryption,
    key_size: plain.keyBytes * 8,
    sector_size: plain.sectorSize,
    skip: plain.skip,
    key_check: { hash: 'sha256', iterations: CHECK_ITERATIONS, salt: salt.toString('base64'), digest: keyCheck(key.expose(), salt).toString('base64') },
  } as unknown as Token;
  return {
    token,
    check(recorded: Token): void {
      const t = recorded as unknown as { scheme?: string; cipher?: string; key_size?: number; sector_size?: number; skip?: number; key_check?: { salt?: string; digest?: string } };
      const given = `${plain.encryption}, ${plain.keyBytes * 8}-bit key, ${plain.sectorSize}-byte sectors, skip ${plain.skip}`;
      const was = `${t.cipher}, ${t.key_size}-bit key, ${t.sector_size}-byte sectors, skip ${t.skip}`;
      if (t.scheme !== 'plain' || given !== was) throw new InvalidArgumentError(`The recorded conversion is of a plain volume with ${was}, not ${given}.`);
      const salt = Buffer.from(t.key_check?.salt ?? '', 'base64');
      const digest = Buffer.from(t.key_check?.digest ?? '', 'base64');
      const mine = keyCheck(key.expose(), salt);
      if (salt.length === 0 || digest.length !== mine.length || !timingSafeEqual(digest, mine)) {
        throw new WrongPassphraseError('The plain key is not the one the recorded conversion started with.');
      }
    },
  };
}

/** Decrypts under the plain key, then encrypts under the new volume key, piece by piece on `pool` (or here). */
export function plainToLuksCipher(plain: PlainParams, plainKey: VolumeKey, pool: CryptoPool | undefined): EncryptCipherFactory {
  return (side) => {
    if (!pool) {
      const from = createSectorCipher(parseEncryption(plain.encryption, plain.keyBytes), plainKey.expose(), plain.sectorSize);
      const to = createSectorCipher(parseEncryption(side.encryption, side.keyBytes), side.key, side.sectorSize);
      return {
        encrypt: async (data, pos) => {
          from.decrypt(data, pos / 512 + plain.skip);
          to.encrypt(data, pos / 512 + side.ivTweak);
        },
        close: async () => {
          from.wipe();
          to.wipe();
        },
      };
    }
    const from = poolSide(pool, { ...plain, ivTweak: plain.skip, key: plainKey.expose() });
    const to = poolSide(pool, side);
    return {
      encrypt: poolTransform(pool, from, to),
      close: async () => {
        pool.dropCipher(from.cipher);
        pool.dropCipher(to.cipher);
      },
    };
  };
}

/** Converts (or resumes converting) the plain dm-crypt volume at `path` into LUKS2 in place. */
export async function encryptPlainVolume(path: string, options: EncryptPlainOptions): Promise<EncryptReport> {
  const { plain, plainKey, workers, ...rest } = options;
  if (plainKey.length !== plain.keyBytes) throw new InvalidArgumentError(`The plain key has ${plainKey.length} bytes; --src-key-size says ${plain.keyBytes * 8} bits.`);
  // The engine encrypts the device from byte 0 to its end: the plain mapping must be all of it.
  if (plain.offset !== 0 || plain.size !== undefined) {
    throw new InvalidArgumentError('In-place conversion of a plain volume needs the ciphertext to fill the device: --src-offset 0 and no --src-size (copy it with `brickcrypt convert --src-format plain` otherwise).');
  }
  const file = await FileDevice.open(path);
  const count = workers ?? defaultWorkerCount();
  const pool = count > 0 ? CryptoPool.create(count) : undefined;
  try {
    if (file.size > 0) plainGeometry(plain, file.size); // alignment of the device to the plain sector size
    return await encryptLuks2(file, {
      ...rest,
      ...(plain.sectorSize > 512 && rest.sectorSize === undefined ? { sectorSize: plain.sectorSize } : {}),
      source: plainSource(plain, plainKey),
      cipherFactory: plainToLuksCipher(plain, plainKey, pool),
    });
  } finally {
    await pool?.close();
    await file.close();
  }
}
