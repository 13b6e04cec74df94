/**
 * Laying out a new LUKS1 or LUKS2 header (cryptsetup 2.6 `luksFormat` layouts and refusals):
 * the checks, the volume-key digest and the empty header, written with no keyslot yet. The
 * engine then adds the first keyslot, so key material is durable before the header that
 * enables it (volume.ts `LuksVolume.format`).
 */
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import { InsufficientSpaceError, InvalidArgumentError } from '../errors.js';
import { cipherSpecStrings, type CipherSpec } from '../crypto/cipher-spec.js';
import { LUKS1_KEY_DISABLED, LUKS1_MAGIC, LUKS1_STRIPES, encodeLuks1Header, validateLuks1Header, type Luks1Header } from '../formats/luks1/header.js';
import { LUKS2_HDR_SIZES } from '../formats/luks2/binary-header.js';
import type { Luks2Metadata } from '../formats/luks2/metadata.js';
import type { VolumeKey } from '../secret.js';
import { pbkdf2Digest } from './keyslot-crypto.js';
import { digestIterations } from './kdf-choice.js';
import { DEFAULT_ALIGNMENT, LUKS2_DEFAULTS, luks1KeyslotLayout, luks2DefaultDataOffset, luks2KeyslotAreaBytes, roundUp } from './layout.js';
import { newLuks2HeaderState } from './luks2-io.js';
import type { FormatOptions } from './options.js';
import type { LuksHeaderState } from './state.js';

/** Where the new header goes and what it protects. */
export interface NewHeader {
  device: BlockDevice;
  header: BlockDevice;
  detached: boolean;
  spec: CipherSpec;
  keyBytes: number;
  hash: string;
  uuid: string;
  key: VolumeKey;
}

/** True for an XTS key whose two halves are equal (OpenSSL refuses it; so do we). */
export function isXtsWeak(spec: CipherSpec, key: Uint8Array): boolean {
  if (spec.mode !== 'xts') return false;
  const half = key.length / 2;
  for (let i = 0; i < half; i++) if (key[i] !== key[half + i]) return false;
  return true;
}

/** Writes an empty LUKS1 header (every keyslot disabled) after clearing the header area. */
export async function writeLuks1Skeleton(n: NewHeader, options: FormatOptions): Promise<LuksHeaderState> {
  const { device, header, detached } = n;
  if (options.pbkdf !== undefined && options.pbkdf !== 'pbkdf2') throw new InvalidArgumentError('LUKS1 supports only the pbkdf2 KDF.');
  if (options.sectorSize !== undefined && options.sectorSize !== 512) throw new InvalidArgumentError('LUKS1 supports only 512-byte sectors.');
  if (options.label || options.subsystem) throw new InvalidArgumentError('LUKS1 has no label or subsystem.');
  const layout = luks1KeyslotLayout(n.keyBytes);
  const sector = layout.endSector;
  const keyslots = layout.offsets.map((keyMaterialOffset) => ({ state: LUKS1_KEY_DISABLED, iterations: 0, salt: new Uint8Array(32), keyMaterialOffset, stripes: LUKS1_STRIPES }));
  const align = (options.alignment ?? DEFAULT_ALIGNMENT) / 512;
  if (!Number.isInteger(align) || align < 1) throw new InvalidArgumentError('Alignment must be a positive multiple of 512 bytes.');
  let payloadOffset: number;
  if (options.dataOffset !== undefined) {
    if (options.dataOffset % 512 !== 0) throw new InvalidArgumentError('Data offset must be a multiple of 512 bytes.');
    payloadOffset = options.dataOffset / 512;
    if (!detached && payloadOffset < sector) throw new InvalidArgumentError(`Data offset must be at least ${sector * 512} bytes for this key size.`);
  } else {
    payloadOffset = detached ? 0 : roundUp(sector, align);
  }
  if (payloadOffset > 0xffffffff) throw new InvalidArgumentError('Data offset is too large for LUKS1.');
  if (header.size < (detached ? sector * 512 : payloadOffset * 512)) {
    throw new InsufficientSpaceError(`Device is too small for the LUKS1 header (needs ${(detached ? sector : payloadOffset) * 512} bytes).`);
  }
  if (device.size < payloadOffset * 512) throw new InsufficientSpaceError('Data device is smaller than the data offset.');
  const mkSalt = new Uint8Array(randomBytes(32));
  const mkIter = await digestIterations(options, n.hash);
  const hdr: Luks1Header = {
    magic: LUKS1_MAGIC,
    version: 1,
    cipherName: n.spec.cipher,
    cipherMode: cipherSpecStrings(n.spec).cipherMode,
    hashSpec: n.hash,
    payloadOffset,
    keyBytes: n.keyBytes,
    mkDigest: await pbkdf2Digest(n.hash, n.key.expose(), mkSalt, mkIter, 20),
    mkDigestSalt: mkSalt,
    mkDigestIterations: mkIter,
    uuid: n.uuid,
    keyslots,
  };
  validateLuks1Header(hdr, { headerDeviceSize: header.size, dataDeviceSize: device.size, detached });
  // Clear old signatures and keyslots first, then write the disabled header.
  await header.writeZeroes(0, detached ? sector * 512 : payloadOffset * 512);
  await header.flush();
  await header.write(encodeLuks1Header(hdr), 0);
  await header.flush();
  return { version: 1, hdr };
}

/**
 * Clears the LUKS2 metadata area and returns the state of a header with one dynamic crypt
 * segment and its digest, not yet written (the first keyslot write writes both copies).
 */
export async function writeLuks2Skeleton(n: NewHeader, options: FormatOptions): Promise<LuksHeaderState> {
  const { device, header, detached } = n;
  const hdrSize = options.hdrSize ?? LUKS2_DEFAULTS.hdrSize;
  if (!(LUKS2_HDR_SIZES as readonly number[]).includes(hdrSize)) throw new InvalidArgumentError(`LUKS2 header size ${hdrSize} is not one of 16 KiB..4 MiB.`);
  let dataOffset: number;
  if (options.dataOffset !== undefined) dataOffset = options.dataOffset;
  else if (detached) dataOffset = 0;
  else dataOffset = luks2DefaultDataOffset(hdrSize, options.keyslotsSize, options.alignment);
  let keyslotsSize = options.keyslotsSize ?? (detached || dataOffset === 0 ? LUKS2_DEFAULTS.dataOffset - 2 * hdrSize : dataOffset - 2 * hdrSize);
  keyslotsSize = Math.floor(keyslotsSize / 4096) * 4096;
  if (keyslotsSize < luks2KeyslotAreaBytes(n.keyBytes)) throw new InvalidArgumentError('The keyslots area is too small for one keyslot.');
  if (!detached && dataOffset < 2 * hdrSize + keyslotsSize) throw new InvalidArgumentError('Data offset overlaps the LUKS2 header and keyslots area.');
  const sectorSize = options.sectorSize ?? (dataOffset % 4096 === 0 && (device.size - dataOffset) % 4096 === 0 ? 4096 : 512);
  if (sectorSize !== 512 && sectorSize !== 4096) throw new InvalidArgumentError('Sector size must be 512 or 4096.');
  if (dataOffset % sectorSize !== 0) throw new InvalidArgumentError('Data offset must be a multiple of the sector size.');
  const metaEnd = 2 * hdrSize + keyslotsSize;
  if (header.size < metaEnd) throw new InsufficientSpaceError(`Device is too small for the LUKS2 header (needs ${metaEnd} bytes).`);
  if (device.size < dataOffset) throw new InsufficientSpaceError('Data device is smaller than the data offset.');
  if ((device.size - dataOffset) % sectorSize !== 0) throw new InvalidArgumentError(`Payload size is not a multiple of the ${sectorSize}-byte sector size.`);
  for (const [what, v, max] of [
    ['label', options.label, 47],
    ['subsystem', options.subsystem, 47],
  ] as const) {
    if (v !== undefined && Buffer.byteLength(v, 'latin1') > max) throw new InvalidArgumentError(`LUKS2 ${what} is longer than ${max} bytes.`);
  }
  const digestSalt = new Uint8Array(randomBytes(32));
  const iterations = await digestIterations(options, 'sha256');
  const digest = await pbkdf2Digest('sha256', n.key.expose(), digestSalt, iterations, 32);
  const metadata: Luks2Metadata = {
    keyslots: {},
    tokens: {},
    segments: {
      '0': {
        type: 'crypt',
        offset: String(dataOffset),
        size: 'dynamic',
        iv_tweak: '0',
        encryption: cipherSpecStrings(n.spec).encryption,
        sector_size: sectorSize,
      },
    },
    digests: {
      '0': {
        type: 'pbkdf2',
        keyslots: [],
        segments: ['0'],
        hash: 'sha256',
        iterations,
        salt: Buffer.from(digestSalt).toString('base64'),
        digest: Buffer.from(digest).toString('base64'),
      },
    },
    config: { json_size: String(hdrSize - 4096), keyslots_size: String(keyslotsSize) },
  };
  const h2 = newLuks2HeaderState({ hdrSize, metadata, uuid: n.uuid, label: options.label ?? '', subsystem: options.subsystem ?? '' });
  await header.writeZeroes(0, metaEnd);
  await header.flush();
  return { version: 2, h2 };
}
