/**
 * Reading and writing the two LUKS2 header copies on a header device (LUKS2 spec 2.2-2.4):
 * the valid copy with the higher seqid wins; a damaged or stale copy is reported so the
 * engine can rewrite it. Writes bump seqid and write each copy JSON-area first and binary
 * header (with its checksum) last, primary before secondary, so a torn write leaves at
 * least one copy whose checksum matches.
 */
import { randomBytes } from 'node:crypto';
import type { BlockDevice } from '../block-device.js';
import { BrickcryptError, CorruptHeaderError, UnknownFormatError } from '../errors.js';
import {
  LUKS2_BINARY_HEADER_SIZE,
  LUKS2_HDR_SIZES,
  LUKS2_MAGIC_PRIMARY,
  LUKS2_MAGIC_SECONDARY,
  LUKS2_OFFSETS,
  computeLuks2Checksum,
  decodeLuks2BinaryHeader,
  encodeLuks2BinaryHeader,
  validateLuks2BinaryHeader,
  verifyLuks2Checksum,
  type Luks2BinaryHeader,
} from '../formats/luks2/binary-header.js';
import { parseLuks2Json, serializeLuks2Json, validateLuks2Metadata, type Luks2Metadata } from '../formats/luks2/metadata.js';

export interface Luks2Copy {
  bin: Luks2BinaryHeader;
  metadata: Luks2Metadata;
  escapeSlashes: boolean;
  keyOrder: Record<string, string[]>;
  offset: number;
}

export interface Luks2HeaderState {
  bin: Luks2BinaryHeader;
  metadata: Luks2Metadata;
  escapeSlashes: boolean;
  /** Member order of the JSON sections as read, so a rewrite keeps cryptsetup's order. */
  keyOrder?: Record<string, string[]>;
  /** Salts of the primary and secondary copy (each copy keeps its own). */
  salts: [Uint8Array, Uint8Array];
}

/**
 * The in-memory state of a new LUKS2 header (both copies get fresh salts; the binary fields are
 * filled in when written). `seqid` 0 for a new volume; a header that replaces another one
 * carries a higher one.
 *
 * @example
 * await writeLuks2Headers(device, newLuks2HeaderState({ hdrSize: 16384, metadata, uuid }));
 */
export function newLuks2HeaderState(o: { hdrSize: number; metadata: Luks2Metadata; uuid: string; label?: string; subsystem?: string; seqid?: bigint }): Luks2HeaderState {
  return {
    bin: {
      magic: new Uint8Array(6),
      version: 2,
      hdrSize: o.hdrSize,
      seqid: o.seqid ?? 0n,
      label: o.label ?? '',
      checksumAlg: 'sha256',
      salt: new Uint8Array(64),
      uuid: o.uuid,
      subsystem: o.subsystem ?? '',
      hdrOffset: 0,
      checksum: new Uint8Array(64),
      padding: new Uint8Array(184),
      padding4096: new Uint8Array(3584),
    },
    metadata: o.metadata,
    escapeSlashes: false,
    salts: [new Uint8Array(randomBytes(64)), new Uint8Array(randomBytes(64))],
  };
}

export interface Luks2ReadResult {
  state: Luks2HeaderState;
  /** Copies that are damaged or older than the winner and should be rewritten. */
  stale: Array<'primary' | 'secondary'>;
  /** Why each stale copy was rejected (for messages). */
  problems: string[];
}

/** Reads and fully validates one header copy at `offset`. */
export async function readLuks2Copy(dev: BlockDevice, offset: number, copy: 'primary' | 'secondary', dataDeviceSize?: number): Promise<Luks2Copy> {
  if (offset + LUKS2_BINARY_HEADER_SIZE > dev.size) throw new CorruptHeaderError(`LUKS2 ${copy} header lies past the end of the device.`);
  const head = new Uint8Array(LUKS2_BINARY_HEADER_SIZE);
  await dev.read(head, offset);
  const bin = decodeLuks2BinaryHeader(head);
  validateLuks2BinaryHeader(bin, { copy, offset });
  if (offset + bin.hdrSize > dev.size) throw new CorruptHeaderError(`LUKS2 ${copy} header (${bin.hdrSize} bytes) is truncated.`);
  const area = new Uint8Array(bin.hdrSize);
  await dev.read(area, offset);
  if (!verifyLuks2Checksum(area, bin.checksumAlg)) throw new CorruptHeaderError(`LUKS2 ${copy} header checksum mismatch.`);
  const parsed = parseLuks2Json(area.subarray(LUKS2_BINARY_HEADER_SIZE));
  const opts: { hdrSize: number; dataDeviceSize?: number } = { hdrSize: bin.hdrSize };
  if (dataDeviceSize !== undefined) opts.dataDeviceSize = dataDeviceSize;
  validateLuks2Metadata(parsed.metadata, opts);
  return { bin, metadata: parsed.metadata, escapeSlashes: parsed.escapeSlashes, keyOrder: parsed.keyOrder, offset };
}

async function attempt(fn: () => Promise<Luks2Copy>): Promise<Luks2Copy | BrickcryptError> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof BrickcryptError) return err;
    throw err;
  }
}

/** Reads both copies and picks the valid one with the higher seqid. Throws the primary's error if neither is valid. */
export async function readLuks2Headers(dev: BlockDevice, dataDeviceSize?: number): Promise<Luks2ReadResult> {
  const primary = await attempt(() => readLuks2Copy(dev, 0, 'primary', dataDeviceSize));
  let secondary: Luks2Copy | BrickcryptError;
  if (!(primary instanceof BrickcryptError)) {
    secondary = await attempt(() => readLuks2Copy(dev, primary.bin.hdrSize, 'secondary', dataDeviceSize));
  } else {
    // The primary cannot say where the secondary is: probe every allowed hdr_size (spec 2.3).
    secondary = new UnknownFormatError('No LUKS2 secondary header found.');
    for (const off of LUKS2_HDR_SIZES) {
      if (off + LUKS2_BINARY_HEADER_SIZE > dev.size) break;
      const magic = new Uint8Array(8);
      await dev.read(magic, off);
      if (!LUKS2_MAGIC_SECONDARY.every((b, i) => magic[i] === b)) continue;
      secondary = await attempt(() => readLuks2Copy(dev, off, 'secondary', dataDeviceSize));
      if (!(secondary instanceof BrickcryptError)) break;
    }
  }
  if (primary instanceof BrickcryptError && secondary instanceof BrickcryptError) throw primary;
  const stale: Array<'primary' | 'secondary'> = [];
  const problems: string[] = [];
  let winner: Luks2Copy;
  if (primary instanceof BrickcryptError) {
    winner = secondary as Luks2Copy;
    stale.push('primary');
    problems.push(primary.message);
  } else if (secondary instanceof BrickcryptError) {
    winner = primary;
    stale.push('secondary');
    problems.push(secondary.message);
  } else if (secondary.bin.seqid > primary.bin.seqid) {
    winner = secondary;
    stale.push('primary');
    problems.push('LUKS2 primary header is older than the secondary.');
  } else {
    winner = primary;
    if (primary.bin.seqid > secondary.bin.seqid || JSON.stringify(primary.metadata) !== JSON.stringify(secondary.metadata)) {
      stale.push('secondary');
      problems.push('LUKS2 secondary header is older than the primary.');
    }
  }
  const salts: [Uint8Array, Uint8Array] = [
    primary instanceof BrickcryptError ? new Uint8Array(randomBytes(64)) : primary.bin.salt,
    secondary instanceof BrickcryptError ? new Uint8Array(randomBytes(64)) : secondary.bin.salt,
  ];
  return { state: { bin: winner.bin, metadata: winner.metadata, escapeSlashes: winner.escapeSlashes, keyOrder: winner.keyOrder, salts }, stale, problems };
}

/** The bytes of one copy (hdr_size bytes, checksum filled in). */
export function buildLuks2Copy(state: Luks2HeaderState, copy: 'primary' | 'secondary'): Uint8Array {
  const hdrSize = state.bin.hdrSize;
  const bin: Luks2BinaryHeader = {
    ...state.bin,
    magic: copy === 'primary' ? LUKS2_MAGIC_PRIMARY : LUKS2_MAGIC_SECONDARY,
    hdrOffset: copy === 'primary' ? 0 : hdrSize,
    salt: state.salts[copy === 'primary' ? 0 : 1],
    checksum: new Uint8Array(64),
  };
  const area = new Uint8Array(hdrSize);
  area.set(encodeLuks2BinaryHeader(bin));
  area.set(serializeLuks2Json(state.metadata, hdrSize - LUKS2_BINARY_HEADER_SIZE, { escapeSlashes: state.escapeSlashes, ...(state.keyOrder ? { keyOrder: state.keyOrder } : {}) }), LUKS2_BINARY_HEADER_SIZE);
  area.set(computeLuks2Checksum(area, bin.checksumAlg), LUKS2_OFFSETS.checksum);
  return area;
}

async function writeCopy(dev: BlockDevice, area: Uint8Array, offset: number): Promise<void> {
  // JSON area first, the binary header (which carries the checksum) last.
  await dev.write(area.subarray(LUKS2_BINARY_HEADER_SIZE), offset + LUKS2_BINARY_HEADER_SIZE);
  await dev.flush();
  await dev.write(area.subarray(0, LUKS2_BINARY_HEADER_SIZE), offset);
  await dev.flush();
}

/** Writes both copies with seqid + 1. Validates the metadata first so nothing invalid reaches the disk. */
export async function writeLuks2Headers(dev: BlockDevice, state: Luks2HeaderState): Promise<void> {
  validateLuks2Metadata(state.metadata, { hdrSize: state.bin.hdrSize });
  state.bin = { ...state.bin, seqid: state.bin.seqid + 1n };
  const primary = buildLuks2Copy(state, 'primary');
  const secondary = buildLuks2Copy(state, 'secondary');
  await writeCopy(dev, primary, 0);
  await writeCopy(dev, secondary, state.bin.hdrSize);
}

/** Rewrites only the named copies from the state (same seqid): recovery of a damaged or stale copy. */
export async function repairLuks2Copies(dev: BlockDevice, state: Luks2HeaderState, copies: Array<'primary' | 'secondary'>): Promise<void> {
  for (const copy of copies) {
    await writeCopy(dev, buildLuks2Copy(state, copy), copy === 'primary' ? 0 : state.bin.hdrSize);
  }
}
