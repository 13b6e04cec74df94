/**
 * LUKS1 on-disk header (LUKS On-Disk Format Specification 1.2.3, section 2.4): a 592-byte,
 * big-endian structure at offset 0 of the header device, followed by eight keyslot areas
 * of anti-forensic key material.
 *
 * Pure codec: `decodeLuks1Header` never judges the content (only the size of the input),
 * `validateLuks1Header` applies the rules cryptsetup 2.6 applies when it loads a header.
 *
 * @example
 * const h = decodeLuks1Header(bytes);      // bytes: the first 592+ bytes of the device
 * validateLuks1Header(h, { deviceSize });  // throws CorruptHeaderError / UnknownFormatError
 * encodeLuks1Header(h);                    // 592 bytes, identical to the input
 */
import { CorruptHeaderError, UnknownFormatError } from '../../errors.js';

/** Offsets of the LUKS1 header fields (spec table 1). */
export const LUKS1_OFFSETS = {
  magic: 0, // 6 bytes "LUKS\xba\xbe"
  version: 6, // u16
  cipherName: 8, // char[32]
  cipherMode: 40, // char[32]
  hashSpec: 72, // char[32]
  payloadOffset: 104, // u32, 512-byte sectors
  keyBytes: 108, // u32
  mkDigest: 112, // 20 bytes
  mkDigestSalt: 132, // 32 bytes
  mkDigestIterations: 164, // u32
  uuid: 168, // char[40]
  keyslots: 208, // 8 x 48 bytes
} as const;

/** Offsets inside one 48-byte keyslot record. */
export const LUKS1_KEYSLOT_OFFSETS = {
  active: 0, // u32: 0x00AC71F3 enabled, 0x0000DEAD disabled
  iterations: 4, // u32
  salt: 8, // 32 bytes
  keyMaterialOffset: 40, // u32, 512-byte sectors
  stripes: 44, // u32
} as const;

export const LUKS1_MAGIC = Uint8Array.of(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe);
export const LUKS1_HEADER_SIZE = 592;
export const LUKS1_KEYSLOT_SIZE = 48;
export const LUKS1_NUM_KEYSLOTS = 8;
export const LUKS1_KEY_ENABLED = 0x00ac71f3;
export const LUKS1_KEY_DISABLED = 0x0000dead;
export const LUKS1_STRIPES = 4000;
export const LUKS1_DIGEST_SIZE = 20;
export const LUKS1_SALT_SIZE = 32;
export const LUKS1_SECTOR = 512;
/** Largest key cryptsetup accepts (LUKS_MAX_KEY... 512-bit XTS keys are 64 bytes; leave room). */
export const LUKS1_MAX_KEY_BYTES = 128;

const STRING_FIELDS = { cipherName: 32, cipherMode: 32, hashSpec: 32, uuid: 40 } as const;

export interface Luks1Keyslot {
  /** Raw state word (see LUKS1_KEY_ENABLED / LUKS1_KEY_DISABLED). */
  state: number;
  iterations: number;
  salt: Uint8Array;
  /** In 512-byte sectors from the start of the header device. */
  keyMaterialOffset: number;
  stripes: number;
}

export interface Luks1Header {
  magic: Uint8Array;
  version: number;
  cipherName: string;
  cipherMode: string;
  hashSpec: string;
  /** In 512-byte sectors; 0 for a detached header whose data starts at 0. */
  payloadOffset: number;
  keyBytes: number;
  mkDigest: Uint8Array;
  mkDigestSalt: Uint8Array;
  mkDigestIterations: number;
  uuid: string;
  keyslots: Luks1Keyslot[];
  /**
   * Bytes after the terminating NUL inside the string fields (normally zeros). Kept so a
   * decode/encode round trip is byte-exact even for headers written by other tools.
   */
  stringTails?: Partial<Record<keyof typeof STRING_FIELDS, Uint8Array>>;
}

/** True when `bytes` starts with the LUKS1/LUKS2 magic and version 1. */
export function isLuks1(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && LUKS1_MAGIC.every((b, i) => bytes[i] === b) && bytes[6] === 0 && bytes[7] === 1;
}

/** Decodes the first 592 bytes. Throws `CorruptHeaderError` only if the input is too short. */
export function decodeLuks1Header(bytes: Uint8Array): Luks1Header {
  if (bytes.length < LUKS1_HEADER_SIZE) {
    throw new CorruptHeaderError(`LUKS1 header needs ${LUKS1_HEADER_SIZE} bytes, got ${bytes.length}.`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, LUKS1_HEADER_SIZE);
  const O = LUKS1_OFFSETS;
  const tails: Luks1Header['stringTails'] = {};
  const str = (name: keyof typeof STRING_FIELDS): string => {
    const off = O[name];
    const field = bytes.subarray(off, off + STRING_FIELDS[name]);
    let end = field.indexOf(0);
    if (end < 0) end = field.length;
    const tail = field.subarray(end);
    if (tail.some((b) => b !== 0)) tails[name] = new Uint8Array(tail);
    return Buffer.from(field.subarray(0, end)).toString('latin1');
  };
  const keyslots: Luks1Keyslot[] = [];
  for (let i = 0; i < LUKS1_NUM_KEYSLOTS; i++) {
    const base = O.keyslots + i * LUKS1_KEYSLOT_SIZE;
    const K = LUKS1_KEYSLOT_OFFSETS;
    keyslots.push({
      state: view.getUint32(base + K.active),
      iterations: view.getUint32(base + K.iterations),
      salt: bytes.slice(base + K.salt, base + K.salt + LUKS1_SALT_SIZE),
      keyMaterialOffset: view.getUint32(base + K.keyMaterialOffset),
      stripes: view.getUint32(base + K.stripes),
    });
  }
  const h: Luks1Header = {
    magic: bytes.slice(0, 6),
    version: view.getUint16(O.version),
    cipherName: str('cipherName'),
    cipherMode: str('cipherMode'),
    hashSpec: str('hashSpec'),
    payloadOffset: view.getUint32(O.payloadOffset),
    keyBytes: view.getUint32(O.keyBytes),
    mkDigest: bytes.slice(O.mkDigest, O.mkDigest + LUKS1_DIGEST_SIZE),
    mkDigestSalt: bytes.slice(O.mkDigestSalt, O.mkDigestSalt + LUKS1_SALT_SIZE),
    mkDigestIterations: view.getUint32(O.mkDigestIterations),
    uuid: str('uuid'),
    keyslots,
  };
  if (Object.keys(tails).length > 0) h.stringTails = tails;
  return h;
}

/** Encodes a header into 592 bytes. Throws `CorruptHeaderError` if a field does not fit. */
export function encodeLuks1Header(h: Luks1Header): Uint8Array {
  const out = new Uint8Array(LUKS1_HEADER_SIZE);
  const view = new DataView(out.buffer);
  const O = LUKS1_OFFSETS;
  const put = (bytes: Uint8Array, off: number, len: number, what: string): void => {
    if (bytes.length !== len) throw new CorruptHeaderError(`LUKS1 ${what} must be ${len} bytes, got ${bytes.length}.`);
    out.set(bytes, off);
  };
  const putStr = (name: keyof typeof STRING_FIELDS, value: string): void => {
    const raw = Buffer.from(value, 'latin1');
    // One byte stays for the terminating NUL, as cryptsetup's strncpy of (size - 1) leaves it.
    if (raw.length >= STRING_FIELDS[name]) throw new CorruptHeaderError(`LUKS1 ${name} '${value}' is too long.`);
    out.set(raw, O[name]);
    const tail = h.stringTails?.[name];
    if (tail && raw.length + tail.length === STRING_FIELDS[name]) out.set(tail, O[name] + raw.length);
  };
  put(h.magic, O.magic, 6, 'magic');
  view.setUint16(O.version, h.version);
  putStr('cipherName', h.cipherName);
  putStr('cipherMode', h.cipherMode);
  putStr('hashSpec', h.hashSpec);
  view.setUint32(O.payloadOffset, h.payloadOffset);
  view.setUint32(O.keyBytes, h.keyBytes);
  put(h.mkDigest, O.mkDigest, LUKS1_DIGEST_SIZE, 'MK digest');
  put(h.mkDigestSalt, O.mkDigestSalt, LUKS1_SALT_SIZE, 'MK digest salt');
  view.setUint32(O.mkDigestIterations, h.mkDigestIterations);
  putStr('uuid', h.uuid);
  if (h.keyslots.length !== LUKS1_NUM_KEYSLOTS) throw new CorruptHeaderError('LUKS1 has exactly 8 keyslots.');
  h.keyslots.forEach((ks, i) => {
    const base = O.keyslots + i * LUKS1_KEYSLOT_SIZE;
    const K = LUKS1_KEYSLOT_OFFSETS;
    view.setUint32(base + K.active, ks.state);
    view.setUint32(base + K.iterations, ks.iterations);
    put(ks.salt, base + K.salt, LUKS1_SALT_SIZE, `keyslot ${i} salt`);
    view.setUint32(base + K.keyMaterialOffset, ks.keyMaterialOffset);
    view.setUint32(base + K.stripes, ks.stripes);
  });
  return out;
}

/** Sectors of AF material one keyslot occupies (spec 2.4: keyBytes * stripes, rounded up to sectors). */
export function luks1KeyslotSectors(keyBytes: number, stripes = LUKS1_STRIPES): number {
  return Math.ceil((keyBytes * stripes) / LUKS1_SECTOR);
}

export interface Luks1ValidateOptions {
  /** Size in bytes of the device holding the header (keyslot areas must fit). */
  headerDeviceSize?: number;
  /** Size in bytes of the data device (the payload offset must lie inside it). */
  dataDeviceSize?: number;
  /** Whether the header is detached (payload offset then refers to the data device). */
  detached?: boolean;
}

const PRINTABLE = /^[\x21-\x7e]+$/;

/**
 * Checks a decoded header as cryptsetup's LUKS_read_phdr / LUKS_check_keyslots do: magic,
 * version, sane key size and strings, every keyslot (active or not) with 4000 stripes, an
 * area after the header, before the payload and not overlapping another.
 */
export function validateLuks1Header(h: Luks1Header, options: Luks1ValidateOptions = {}): void {
  if (!LUKS1_MAGIC.every((b, i) => h.magic[i] === b)) throw new UnknownFormatError('No LUKS header (bad magic).');
  if (h.version !== 1) throw new UnknownFormatError(`LUKS header version ${h.version} is not 1.`);
  if (h.keyBytes < 1 || h.keyBytes > LUKS1_MAX_KEY_BYTES) {
    throw new CorruptHeaderError(`LUKS1 key size ${h.keyBytes} bytes is out of range 1..${LUKS1_MAX_KEY_BYTES}.`);
  }
  for (const [name, value] of [
    ['cipher name', h.cipherName],
    ['cipher mode', h.cipherMode],
    ['hash spec', h.hashSpec],
  ] as const) {
    if (!PRINTABLE.test(value)) throw new CorruptHeaderError(`LUKS1 ${name} is empty or not printable.`);
  }
  if (h.uuid.length > 0 && !PRINTABLE.test(h.uuid)) throw new CorruptHeaderError('LUKS1 UUID is not printable.');
  if (h.mkDigestIterations < 1) throw new CorruptHeaderError('LUKS1 MK digest iteration count is 0.');
  const areaSectors = luks1KeyslotSectors(h.keyBytes);
  const headerSectors = Math.ceil(LUKS1_HEADER_SIZE / LUKS1_SECTOR);
  const areas: Array<[number, number, number]> = [];
  h.keyslots.forEach((ks, i) => {
    if (ks.state !== LUKS1_KEY_ENABLED && ks.state !== LUKS1_KEY_DISABLED) {
      throw new CorruptHeaderError(`LUKS1 keyslot ${i} has an invalid state 0x${ks.state.toString(16)}.`);
    }
    if (ks.stripes !== LUKS1_STRIPES) throw new CorruptHeaderError(`LUKS1 keyslot ${i} has ${ks.stripes} stripes, not 4000.`);
    if (ks.state === LUKS1_KEY_ENABLED && ks.iterations < 1) throw new CorruptHeaderError(`LUKS1 keyslot ${i} has 0 iterations.`);
    const start = ks.keyMaterialOffset;
    const end = start + areaSectors;
    if (start < headerSectors) throw new CorruptHeaderError(`LUKS1 keyslot ${i} area overlaps the header.`);
    if (h.payloadOffset !== 0 && !options.detached && end > h.payloadOffset) {
      throw new CorruptHeaderError(`LUKS1 keyslot ${i} area (sectors ${start}..${end}) runs into the payload at ${h.payloadOffset}.`);
    }
    if (options.headerDeviceSize !== undefined && end * LUKS1_SECTOR > options.headerDeviceSize) {
      throw new CorruptHeaderError(`LUKS1 keyslot ${i} area ends past the end of the header device.`);
    }
    for (const [j, s, e] of areas) {
      if (start < e && s < end) throw new CorruptHeaderError(`LUKS1 keyslots ${j} and ${i} overlap.`);
    }
    areas.push([i, start, end]);
  });
  if (options.dataDeviceSize !== undefined && h.payloadOffset * LUKS1_SECTOR > options.dataDeviceSize) {
    throw new CorruptHeaderError(
      `LUKS1 payload offset ${h.payloadOffset} sectors is past the end of the ${options.dataDeviceSize}-byte device.`,
    );
  }
}
