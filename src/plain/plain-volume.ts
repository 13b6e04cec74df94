/**
 * A plain dm-crypt volume: no header, only parameters the user knows (cipher, key size,
 * `--offset`, `--skip`, `--size`, `--sector-size`, all in cryptsetup's units) and a key. Its
 * decrypted view is the same `EncryptedDevice` a LUKS volume gets, with the geometry dm-crypt
 * gives a plain mapping (lib/setup.c _crypt_format_plain, man cryptsetup-open):
 *
 * - the ciphertext starts `offset` 512-byte sectors into the device;
 * - the first sector's IV number is `skip` (512-byte units, also for larger sectors: plain
 *   mode without `--iv-large-sectors`), i.e. the view's `ivTweak`;
 * - the size is `size` 512-byte sectors, or the rest of the device after `offset`.
 *
 * @example
 * const params = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits: 512 });
 * const dev = openPlainVolume(file, params, key);   // takes ownership of key
 */
import type { BlockDevice } from '../block-device.js';
import { InvalidArgumentError, OutOfRangeError } from '../errors.js';
import type { VolumeKey } from '../secret.js';
import { cipherSpecStrings, parseEncryption, validateKeyBytes } from '../crypto/cipher-spec.js';
import { PLAIN_DEFAULTS, PLAIN_MAX_KEY_BYTES, validatePlainHash } from '../crypto/plain-key.js';
import { EncryptedDevice, type EncryptedDeviceOptions, type EncryptionParams } from '../devices/encrypted-device.js';

const SECTOR = 512;

/** What a user says about a plain volume; unset fields take cryptsetup's defaults. */
export interface PlainOptions {
  /** dm-crypt cipher string (`--cipher`), default aes-xts-plain64. */
  cipher?: string;
  /** Key size in bits (`--key-size`), default 256. */
  keyBits?: number;
  /** Passphrase hash (`--hash`), default sha256; only used for passphrases (see plain-key.ts). */
  hash?: string;
  /** `--offset`: 512-byte sectors before the ciphertext. */
  offset?: number;
  /** `--skip`: IV number of the first sector (512-byte units). */
  skip?: number;
  /** `--size`: 512-byte sectors of the mapping (default: the rest of the device). */
  size?: number;
  /** `--sector-size`: encryption sector size, default 512. */
  sectorSize?: number;
}

/** Checked plain parameters. */
export interface PlainParams {
  encryption: string;
  keyBytes: number;
  /** The hash given, if any (undefined: the default applies to passphrases). */
  hash?: string;
  offset: number;
  skip: number;
  size?: number;
  sectorSize: number;
}

function sectors(value: number | undefined, name: string): number {
  if (value === undefined) return 0;
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`--${name}: ${value} is not a sector count.`);
  return value;
}

/**
 * Applies defaults and checks the parameters on their own (no device yet).
 * @throws UnsupportedCipherError for a cipher or key size brickcrypt cannot run,
 *   InvalidArgumentError for malformed numbers or a hash spec that cannot work.
 */
export function resolvePlainParams(o: PlainOptions): PlainParams {
  const encryption = (o.cipher ?? PLAIN_DEFAULTS.cipher).trim().toLowerCase();
  const bits = o.keyBits ?? PLAIN_DEFAULTS.keyBits;
  if (!Number.isInteger(bits) || bits <= 0 || bits % 8 !== 0 || bits / 8 > PLAIN_MAX_KEY_BYTES) {
    throw new InvalidArgumentError(`--key-size: ${bits} is not a key size in bits (a multiple of 8, at most ${PLAIN_MAX_KEY_BYTES * 8}).`);
  }
  const keyBytes = bits / 8;
  const spec = parseEncryption(encryption);
  validateKeyBytes(spec, keyBytes);
  if (o.hash !== undefined) validatePlainHash(o.hash, keyBytes);
  const sectorSize = o.sectorSize ?? SECTOR;
  if (!Number.isInteger(Math.log2(sectorSize)) || sectorSize < 512 || sectorSize > 4096) {
    throw new InvalidArgumentError(`--sector-size: ${sectorSize} is not a power of two in 512..4096.`);
  }
  const offset = sectors(o.offset, 'offset');
  const skip = sectors(o.skip, 'skip');
  const params: PlainParams = { encryption: cipherSpecStrings(spec).encryption, keyBytes, offset, skip, sectorSize };
  if (o.hash !== undefined) params.hash = o.hash;
  if (o.size !== undefined) {
    params.size = sectors(o.size, 'size');
    if (params.size === 0) throw new InvalidArgumentError('--size: a plain mapping needs at least one sector.');
  }
  const perSector = sectorSize / SECTOR;
  // dm-crypt refuses an IV offset that is not a whole encryption sector ("Invalid iv_offset sector").
  if (skip % perSector !== 0) throw new InvalidArgumentError(`--skip ${skip} is not a multiple of the ${sectorSize}-byte sector.`);
  if (params.size !== undefined && params.size % perSector !== 0) {
    throw new InvalidArgumentError(`--size ${params.size} is not a multiple of the ${sectorSize}-byte sector.`);
  }
  return params;
}

/**
 * The geometry of `params` on a device of `deviceSize` bytes, as the `EncryptedDevice` takes it.
 * @throws OutOfRangeError when the offset or the size reach past the device, as cryptsetup
 *   refuses ("Requested offset is beyond real size of device").
 */
export function plainGeometry(params: PlainParams, deviceSize: number): EncryptionParams {
  const dataOffset = params.offset * SECTOR;
  if (dataOffset >= deviceSize) {
    throw new OutOfRangeError(`Requested offset ${params.offset} sectors (${dataOffset} bytes) is beyond the ${deviceSize}-byte device.`);
  }
  const payloadSize = params.size !== undefined ? params.size * SECTOR : deviceSize - dataOffset;
  if (dataOffset + payloadSize > deviceSize) {
    throw new OutOfRangeError(`Offset ${params.offset} + size ${params.size} sectors reach past the ${deviceSize}-byte device.`);
  }
  if (params.sectorSize > SECTOR && payloadSize % params.sectorSize !== 0) {
    // _crypt_format_plain: "Device size is not aligned to requested sector size."
    throw new InvalidArgumentError(`The ${payloadSize}-byte mapping is not aligned to the ${params.sectorSize}-byte sector size.`);
  }
  return { encryption: params.encryption, keyBytes: params.keyBytes, sectorSize: params.sectorSize, ivTweak: params.skip, dataOffset, payloadSize };
}

/**
 * The decrypted view of a plain volume on `data`. Takes ownership of `key` (wiped on close).
 * @throws InvalidArgumentError when the key length disagrees with the parameters.
 */
export function openPlainVolume(data: BlockDevice, params: PlainParams, key: VolumeKey, options: EncryptedDeviceOptions = {}): EncryptedDevice {
  if (key.length !== params.keyBytes) {
    key.wipe();
    throw new InvalidArgumentError(`The key has ${key.length} bytes; the plain parameters say ${params.keyBytes}.`);
  }
  let geometry: EncryptionParams;
  try {
    geometry = plainGeometry(params, data.size);
  } catch (err) {
    key.wipe();
    throw err;
  }
  return EncryptedDevice.open(data, geometry, key, options);
}

/** A one-line description, e.g. for `attach` logs: "aes-xts-plain64, 512-bit key, offset 0, skip 0". */
export function describePlain(params: PlainParams): string {
  return `${params.encryption}, ${params.keyBytes * 8}-bit key, offset ${params.offset}, skip ${params.skip}${params.size !== undefined ? `, size ${params.size}` : ''}, ${params.sectorSize}-byte sectors`;
}
