/**
 * LUKS2 binary header (LUKS2 On-Disk Format Specification 1.1.x, section 2): 4096 bytes,
 * big-endian, stored twice (primary at 0, secondary at hdr_size), each followed by its
 * JSON area of hdr_size - 4096 bytes. The checksum covers the binary header with the
 * checksum field zeroed followed by the whole JSON area.
 *
 * @example
 * const bin = decodeLuks2BinaryHeader(bytes.subarray(0, 4096));
 * verifyLuks2Checksum(bytes.subarray(0, bin.hdrSize)); // true if intact
 */
import { createHash } from 'node:crypto';
import { CorruptHeaderError, UnknownFormatError, UnsupportedError } from '../../errors.js';

/** Field offsets of the LUKS2 binary header. */
export const LUKS2_OFFSETS = {
  magic: 0, // 6 bytes: "LUKS\xba\xbe" primary, "SKUL\xba\xbe" secondary
  version: 6, // u16 = 2
  hdrSize: 8, // u64, binary header + JSON area
  seqid: 16, // u64, incremented on every update
  label: 24, // char[48]
  checksumAlg: 72, // char[32], "sha256"
  salt: 104, // 64 bytes, unique per header copy
  uuid: 168, // char[40]
  subsystem: 208, // char[48]
  hdrOffset: 256, // u64, offset of this copy from the device start
  padding: 264, // 184 bytes, must be zero
  checksum: 448, // 64 bytes
  padding4096: 512, // 3584 bytes, must be zero
} as const;

export const LUKS2_BINARY_HEADER_SIZE = 4096;
export const LUKS2_MAGIC_PRIMARY = Uint8Array.of(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe);
export const LUKS2_MAGIC_SECONDARY = Uint8Array.of(0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe);
/** Every hdr_size the spec allows (binary header + JSON area): 16 KiB .. 4 MiB. */
export const LUKS2_HDR_SIZES = [16384, 32768, 65536, 131072, 262144, 524288, 1048576, 2097152, 4194304] as const;
/** Where cryptsetup looks for a secondary header when the primary is unreadable (the allowed hdr_sizes). */
export const LUKS2_SECONDARY_OFFSETS = LUKS2_HDR_SIZES;

const STRINGS = { label: 48, checksumAlg: 32, uuid: 40, subsystem: 48 } as const;

export interface Luks2BinaryHeader {
  magic: Uint8Array;
  version: number;
  hdrSize: number;
  seqid: bigint;
  label: string;
  checksumAlg: string;
  salt: Uint8Array;
  uuid: string;
  subsystem: string;
  hdrOffset: number;
  checksum: Uint8Array;
  /** The two reserved areas, kept verbatim so a round trip is exact (they must be zero). */
  padding: Uint8Array;
  padding4096: Uint8Array;
}

export function isLuks2Magic(bytes: Uint8Array): 'primary' | 'secondary' | null {
  if (bytes.length < 8 || bytes[6] !== 0 || bytes[7] !== 2) return null;
  if (LUKS2_MAGIC_PRIMARY.every((b, i) => bytes[i] === b)) return 'primary';
  if (LUKS2_MAGIC_SECONDARY.every((b, i) => bytes[i] === b)) return 'secondary';
  return null;
}

function readU64(view: DataView, off: number, what: string): number {
  const v = view.getBigUint64(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CorruptHeaderError(`LUKS2 ${what} ${v} is out of range.`);
  return Number(v);
}

/** Decodes 4096 bytes of binary header. Throws `CorruptHeaderError` for short input or unrepresentable sizes. */
export function decodeLuks2BinaryHeader(bytes: Uint8Array): Luks2BinaryHeader {
  if (bytes.length < LUKS2_BINARY_HEADER_SIZE) {
    throw new CorruptHeaderError(`LUKS2 binary header needs 4096 bytes, got ${bytes.length}.`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, LUKS2_BINARY_HEADER_SIZE);
  const O = LUKS2_OFFSETS;
  const str = (name: keyof typeof STRINGS): string => {
    const field = bytes.subarray(O[name], O[name] + STRINGS[name]);
    let end = field.indexOf(0);
    if (end < 0) end = field.length;
    return Buffer.from(field.subarray(0, end)).toString('latin1');
  };
  return {
    magic: bytes.slice(0, 6),
    version: view.getUint16(O.version),
    hdrSize: readU64(view, O.hdrSize, 'hdr_size'),
    seqid: view.getBigUint64(O.seqid),
    label: str('label'),
    checksumAlg: str('checksumAlg'),
    salt: bytes.slice(O.salt, O.salt + 64),
    uuid: str('uuid'),
    subsystem: str('subsystem'),
    hdrOffset: readU64(view, O.hdrOffset, 'hdr_offset'),
    checksum: bytes.slice(O.checksum, O.checksum + 64),
    padding: bytes.slice(O.padding, O.padding + 184),
    padding4096: bytes.slice(O.padding4096, LUKS2_BINARY_HEADER_SIZE),
  };
}

/** Encodes a binary header into 4096 bytes (checksum as given in `h.checksum`). */
export function encodeLuks2BinaryHeader(h: Luks2BinaryHeader): Uint8Array {
  const out = new Uint8Array(LUKS2_BINARY_HEADER_SIZE);
  const view = new DataView(out.buffer);
  const O = LUKS2_OFFSETS;
  const putStr = (name: keyof typeof STRINGS, value: string): void => {
    const raw = Buffer.from(value, 'latin1');
    if (raw.length > STRINGS[name] - 1) throw new CorruptHeaderError(`LUKS2 ${name} '${value}' is longer than ${STRINGS[name] - 1} bytes.`);
    out.set(raw, O[name]);
  };
  const putBytes = (b: Uint8Array, off: number, len: number, what: string): void => {
    if (b.length !== len) throw new CorruptHeaderError(`LUKS2 ${what} must be ${len} bytes.`);
    out.set(b, off);
  };
  putBytes(h.magic, O.magic, 6, 'magic');
  view.setUint16(O.version, h.version);
  view.setBigUint64(O.hdrSize, BigInt(h.hdrSize));
  view.setBigUint64(O.seqid, h.seqid);
  putStr('label', h.label);
  putStr('checksumAlg', h.checksumAlg);
  putBytes(h.salt, O.salt, 64, 'salt');
  putStr('uuid', h.uuid);
  putStr('subsystem', h.subsystem);
  view.setBigUint64(O.hdrOffset, BigInt(h.hdrOffset));
  putBytes(h.padding, O.padding, 184, 'padding');
  putBytes(h.checksum, O.checksum, 64, 'checksum');
  putBytes(h.padding4096, O.padding4096, 3584, 'padding');
  return out;
}

/**
 * sha256 over the binary header with a zeroed checksum field and the JSON area
 * (`area` = hdr_size bytes: binary header followed by JSON area). Returns 64 bytes
 * (digest zero-padded), the on-disk form.
 */
export function computeLuks2Checksum(area: Uint8Array, alg = 'sha256'): Uint8Array {
  if (alg !== 'sha256') throw new UnsupportedError(`LUKS2 checksum algorithm '${alg}' is not supported.`);
  const h = createHash('sha256');
  h.update(area.subarray(0, LUKS2_OFFSETS.checksum));
  h.update(new Uint8Array(64));
  h.update(area.subarray(LUKS2_OFFSETS.checksum + 64));
  const out = new Uint8Array(64);
  out.set(h.digest());
  return out;
}

/** True when the checksum stored in `area` (one header copy, hdr_size bytes) matches its content. */
export function verifyLuks2Checksum(area: Uint8Array, alg = 'sha256'): boolean {
  const stored = area.subarray(LUKS2_OFFSETS.checksum, LUKS2_OFFSETS.checksum + 64);
  const want = computeLuks2Checksum(area, alg);
  return want.every((b, i) => stored[i] === b);
}

/**
 * Structural checks of one copy as cryptsetup's hdr_read_disk does: magic for the copy,
 * version 2, an allowed hdr_size, hdr_offset equal to where the copy was found, a
 * supported checksum algorithm.
 */
export function validateLuks2BinaryHeader(h: Luks2BinaryHeader, expect: { copy: 'primary' | 'secondary'; offset: number }): void {
  const magic = expect.copy === 'primary' ? LUKS2_MAGIC_PRIMARY : LUKS2_MAGIC_SECONDARY;
  if (!magic.every((b, i) => h.magic[i] === b)) throw new UnknownFormatError(`No LUKS2 ${expect.copy} header (bad magic).`);
  if (h.version !== 2) throw new UnknownFormatError(`LUKS2 ${expect.copy} header has version ${h.version}.`);
  if (!(LUKS2_HDR_SIZES as readonly number[]).includes(h.hdrSize)) {
    throw new CorruptHeaderError(`LUKS2 hdr_size ${h.hdrSize} is not one of 16 KiB..4 MiB.`);
  }
  if (h.hdrOffset !== expect.offset) {
    throw new CorruptHeaderError(`LUKS2 ${expect.copy} header says hdr_offset ${h.hdrOffset}, found at ${expect.offset}.`);
  }
  if (h.checksumAlg !== 'sha256') throw new UnsupportedError(`LUKS2 checksum algorithm '${h.checksumAlg}' is not supported.`);
}
