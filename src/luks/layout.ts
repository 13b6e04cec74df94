/**
 * Where a LUKS header puts things, as pure arithmetic: the keyslot areas of LUKS1
 * (cryptsetup `LUKS_generate_phdr`: 4 KiB aligned from sector 8), the default LUKS2
 * data offset and keyslots area (cryptsetup 2.6 `lib/luks2/luks2.h`, `setup.c`), and
 * the sizes a caller needs to create a file before formatting it.
 */
import { parseEncryption, type CipherSpec } from '../crypto/cipher-spec.js';
import { InvalidArgumentError } from '../errors.js';
import { LUKS1_NUM_KEYSLOTS, LUKS1_STRIPES, luks1KeyslotSectors, type Luks1Header } from '../formats/luks1/header.js';
import { AF_STRIPES } from './keyslot-crypto.js';
import type { FormatOptions } from './options.js';

const MIB = 1024 * 1024;
/** cryptsetup 2.6 LUKS2 defaults (lib/luks2/luks2.h, setup.c). */
export const LUKS2_DEFAULTS = { hdrSize: 16384, dataOffset: 16 * MIB, keyslotsSize: 16 * MIB - 2 * 16384 } as const;
/** cryptsetup aligns the payload to 1 MiB unless told otherwise. */
export const DEFAULT_ALIGNMENT = MIB;

export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** The default key size for a cipher: 512 bits for XTS (two AES-256 keys), else 256. */
export function defaultKeyBytes(spec: CipherSpec): number {
  return (spec.mode === 'xts' ? 512 : 256) / 8;
}

/** A LUKS2 keyslot area: the AF-split key material, rounded up to 4 KiB as cryptsetup allocates it. */
export function luks2KeyslotAreaBytes(keyBytes: number): number {
  return roundUp(keyBytes * AF_STRIPES, 4096);
}

/** LUKS1 keyslot material offsets (in 512-byte sectors) and the first sector after the last area. */
export function luks1KeyslotLayout(keyBytes: number, stripes = LUKS1_STRIPES): { offsets: number[]; endSector: number } {
  const areaSectors = luks1KeyslotSectors(keyBytes, stripes);
  const offsets: number[] = [];
  let sector = 8;
  for (let i = 0; i < LUKS1_NUM_KEYSLOTS; i++) {
    offsets.push(sector);
    sector = roundUp(sector + areaSectors, 8);
  }
  return { offsets, endSector: sector };
}

/** End in bytes of the last LUKS1 keyslot area of an existing header (old LUKS1.0 layouts included). */
export function luks1KeyslotEnd(hdr: Luks1Header): number {
  const sectors = luks1KeyslotSectors(hdr.keyBytes);
  return Math.max(...hdr.keyslots.map((k) => k.keyMaterialOffset + sectors)) * 512;
}

/** The LUKS2 data offset cryptsetup picks for a header in the same device. */
export function luks2DefaultDataOffset(hdrSize: number, keyslotsSize: number | undefined, alignment: number | undefined): number {
  return Math.max(LUKS2_DEFAULTS.dataOffset, roundUp(2 * hdrSize + (keyslotsSize ?? 0), alignment ?? DEFAULT_ALIGNMENT));
}

function keyBytesOf(options: Pick<FormatOptions, 'cipher' | 'keySizeBits'>): number {
  const spec = parseEncryption(options.cipher ?? 'aes-xts-plain64');
  if (options.keySizeBits === undefined) return defaultKeyBytes(spec);
  if (options.keySizeBits % 8 !== 0) throw new InvalidArgumentError(`Key size ${options.keySizeBits} is not a whole number of bytes.`);
  return options.keySizeBits / 8;
}

/**
 * The data offset `LuksVolume.format` will choose for these options, so a caller can size a
 * new file (header + payload) before formatting it.
 */
export function plannedDataOffset(options: Pick<FormatOptions, 'type' | 'cipher' | 'keySizeBits' | 'dataOffset' | 'alignment' | 'hdrSize' | 'keyslotsSize'> & { detached?: boolean }): number {
  if (options.dataOffset !== undefined) return options.dataOffset;
  if (options.detached) return 0;
  if (options.type === 'luks2') return luks2DefaultDataOffset(options.hdrSize ?? LUKS2_DEFAULTS.hdrSize, options.keyslotsSize, options.alignment);
  const { endSector } = luks1KeyslotLayout(keyBytesOf(options));
  return roundUp(endSector, (options.alignment ?? DEFAULT_ALIGNMENT) / 512) * 512;
}

/** Bytes a detached header file needs for these options. */
export function plannedHeaderSize(options: Pick<FormatOptions, 'type' | 'cipher' | 'keySizeBits' | 'hdrSize' | 'keyslotsSize'>): number {
  if (options.type === 'luks2') {
    const hdrSize = options.hdrSize ?? LUKS2_DEFAULTS.hdrSize;
    return 2 * hdrSize + (options.keyslotsSize ?? LUKS2_DEFAULTS.dataOffset - 2 * hdrSize);
  }
  return luks1KeyslotLayout(keyBytesOf(options)).endSector * 512;
}
