/**
 * The dirty-chunk bitmap file (`<volume>.dirty-bitmap`): which backup chunks of a volume may have
 * been written since a given backup (its base). Pure encode/decode/validate; the file I/O and the
 * rules for trusting it are in src/backup/dirty-tracking.ts. All integers are big-endian.
 *
 * | offset | size | field                                                                  |
 * |--------|------|------------------------------------------------------------------------|
 * | 0      | 8    | magic `BCDIRTY1`                                                       |
 * | 8      | 2    | version, 1                                                             |
 * | 10     | 1    | state: 1 in use (a writer has it open: not to be trusted), 2 clean     |
 * | 11     | 1    | reserved, 0                                                            |
 * | 12     | 4    | chunk size in bytes (the repository's)                                 |
 * | 16     | 8    | volume size in bytes                                                   |
 * | 24     | 8    | volume file's st_dev                                                   |
 * | 32     | 8    | volume file's st_ino                                                   |
 * | 40     | 8    | volume file's st_ctime in ns when the state became clean               |
 * | 48     | 36   | repository id (UUID text), or all zero bytes: no base                  |
 * | 84     | 4    | pid of the writer (state 1), else 0                                    |
 * | 88     | 32   | base backup id (ASCII, NUL-padded), or all zero bytes: no base         |
 * | 120    | 4    | chunk count = ceil(volume size / chunk size)                           |
 * | 124    | 4    | reserved, 0                                                            |
 * | 128    | n    | bitmap, n = ceil(count / 8): bit (i & 7) of byte (i >> 3) = chunk i    |
 * | 128+n  | 32   | SHA-256 of bytes [0, 128+n)                                            |
 */
import { createHash } from 'node:crypto';
import { IntegrityError } from '../errors.js';
import { isBackupId } from './manifest.js';

export const BITMAP_MAGIC = 'BCDIRTY1';
export const BITMAP_VERSION = 1;
export const BITMAP_HEADER_BYTES = 128;
export const BITMAP_DIGEST_BYTES = 32;

export const BITMAP_STATE = { inUse: 1, clean: 2 } as const;
export type BitmapState = 'in-use' | 'clean';

const OFFSETS = {
  magic: 0,
  version: 8,
  state: 10,
  chunkSize: 12,
  volumeSize: 16,
  dev: 24,
  ino: 32,
  ctimeNs: 40,
  repository: 48,
  pid: 84,
  base: 88,
  count: 120,
  bits: 128,
} as const;
const REPOSITORY_BYTES = 36;
const BASE_BYTES = 32;

export interface DirtyBitmap {
  state: BitmapState;
  chunkSize: number;
  volumeSize: number;
  /** Identity of the volume file the bitmap belongs to, and its ctime when the bitmap was made clean. */
  dev: bigint;
  ino: bigint;
  ctimeNs: bigint;
  /** The backup (and its repository) every chunk not marked dirty is identical to; undefined: none. */
  repository?: string;
  base?: string;
  /** The writer's pid while in use. */
  pid: number;
  /** ceil(count / 8) bytes; bit set = the chunk may have changed since `base`. */
  bits: Uint8Array;
}

export function chunkCount(volumeSize: number, chunkSize: number): number {
  return Math.ceil(volumeSize / chunkSize);
}

export function bitmapBytes(count: number): number {
  return Math.ceil(count / 8);
}

export function isDirty(bits: Uint8Array, i: number): boolean {
  return (bits[i >>> 3]! & (1 << (i & 7))) !== 0;
}

/** Sets the bits of every chunk that `[offset, offset+length)` touches. */
export function markRange(bits: Uint8Array, chunkSize: number, offset: number, length: number): void {
  if (length <= 0) return;
  const last = Math.floor((offset + length - 1) / chunkSize);
  for (let i = Math.floor(offset / chunkSize); i <= last; i++) bits[i >>> 3]! |= 1 << (i & 7);
}

export function countDirty(bits: Uint8Array, count: number): number {
  let n = 0;
  for (let i = 0; i < count; i++) if (isDirty(bits, i)) n++;
  return n;
}

/** Checks the fields' consistency; throws IntegrityError. */
export function validateDirtyBitmap(b: DirtyBitmap): void {
  const bad = (why: string): never => {
    throw new IntegrityError(`dirty bitmap: ${why}.`);
  };
  if (b.state !== 'in-use' && b.state !== 'clean') bad('unknown state');
  if (!Number.isSafeInteger(b.chunkSize) || b.chunkSize <= 0 || b.chunkSize % 4096 !== 0 || b.chunkSize > 0xffffffff) bad('chunk size is not a positive multiple of 4096');
  if (!Number.isSafeInteger(b.volumeSize) || b.volumeSize < 0) bad('bad volume size');
  const count = chunkCount(b.volumeSize, b.chunkSize);
  if (count > 0xffffffff) bad('too many chunks');
  if (b.bits.length !== bitmapBytes(count)) bad(`${b.bits.length} bitmap bytes for ${count} chunks`);
  // Bits past the last chunk are always clear.
  if (count % 8 !== 0 && b.bits.length > 0 && (b.bits[b.bits.length - 1]! >> (count % 8)) !== 0) bad('bits set past the last chunk');
  if ((b.repository === undefined) !== (b.base === undefined)) bad('repository and base backup go together');
  if (b.repository !== undefined && !/^[0-9a-f-]{36}$/.test(b.repository)) bad('repository id is not a UUID');
  if (b.base !== undefined && !isBackupId(b.base)) bad('base is not a backup id');
  if (!Number.isSafeInteger(b.pid) || b.pid < 0 || b.pid > 0xffffffff) bad('bad pid');
  for (const v of [b.dev, b.ino, b.ctimeNs]) if (typeof v !== 'bigint' || v < 0n || v >= 1n << 64n) bad('bad file identity');
}

export function encodeDirtyBitmap(b: DirtyBitmap): Uint8Array {
  validateDirtyBitmap(b);
  const count = chunkCount(b.volumeSize, b.chunkSize);
  const out = new Uint8Array(BITMAP_HEADER_BYTES + b.bits.length + BITMAP_DIGEST_BYTES);
  const v = new DataView(out.buffer);
  out.set(Buffer.from(BITMAP_MAGIC, 'latin1'), OFFSETS.magic);
  v.setUint16(OFFSETS.version, BITMAP_VERSION);
  out[OFFSETS.state] = b.state === 'clean' ? BITMAP_STATE.clean : BITMAP_STATE.inUse;
  v.setUint32(OFFSETS.chunkSize, b.chunkSize);
  v.setBigUint64(OFFSETS.volumeSize, BigInt(b.volumeSize));
  v.setBigUint64(OFFSETS.dev, b.dev);
  v.setBigUint64(OFFSETS.ino, b.ino);
  v.setBigUint64(OFFSETS.ctimeNs, b.ctimeNs);
  if (b.repository !== undefined) out.set(Buffer.from(b.repository, 'latin1'), OFFSETS.repository);
  v.setUint32(OFFSETS.pid, b.pid);
  if (b.base !== undefined) out.set(Buffer.from(b.base, 'latin1'), OFFSETS.base);
  v.setUint32(OFFSETS.count, count);
  out.set(b.bits, OFFSETS.bits);
  const end = BITMAP_HEADER_BYTES + b.bits.length;
  out.set(createHash('sha256').update(out.subarray(0, end)).digest(), end);
  return out;
}

const text = (bytes: Uint8Array): string | undefined => {
  const s = Buffer.from(bytes).toString('latin1').replace(/\0+$/, '');
  return s === '' ? undefined : s;
};

/** Decodes and checks the digest and every field; any problem is an IntegrityError. */
export function decodeDirtyBitmap(bytes: Uint8Array): DirtyBitmap {
  if (bytes.length < BITMAP_HEADER_BYTES + BITMAP_DIGEST_BYTES || Buffer.from(bytes.subarray(0, 8)).toString('latin1') !== BITMAP_MAGIC) {
    throw new IntegrityError('dirty bitmap: bad magic or too short.');
  }
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint16(OFFSETS.version) !== BITMAP_VERSION) throw new IntegrityError(`dirty bitmap: version ${v.getUint16(OFFSETS.version)} is not supported.`);
  const end = bytes.length - BITMAP_DIGEST_BYTES;
  const digest = createHash('sha256').update(bytes.subarray(0, end)).digest();
  if (!digest.equals(bytes.subarray(end))) throw new IntegrityError('dirty bitmap: does not match its digest (damaged or torn).');
  const stateByte = bytes[OFFSETS.state]!;
  if (stateByte !== BITMAP_STATE.inUse && stateByte !== BITMAP_STATE.clean) throw new IntegrityError(`dirty bitmap: unknown state ${stateByte}.`);
  const repository = text(bytes.subarray(OFFSETS.repository, OFFSETS.repository + REPOSITORY_BYTES));
  const base = text(bytes.subarray(OFFSETS.base, OFFSETS.base + BASE_BYTES));
  const b: DirtyBitmap = {
    state: stateByte === BITMAP_STATE.clean ? 'clean' : 'in-use',
    chunkSize: v.getUint32(OFFSETS.chunkSize),
    volumeSize: Number(v.getBigUint64(OFFSETS.volumeSize)),
    dev: v.getBigUint64(OFFSETS.dev),
    ino: v.getBigUint64(OFFSETS.ino),
    ctimeNs: v.getBigUint64(OFFSETS.ctimeNs),
    ...(repository !== undefined ? { repository } : {}),
    ...(base !== undefined ? { base } : {}),
    pid: v.getUint32(OFFSETS.pid),
    bits: bytes.slice(OFFSETS.bits, end),
  };
  if (v.getUint32(OFFSETS.count) !== chunkCount(b.volumeSize, b.chunkSize)) throw new IntegrityError('dirty bitmap: chunk count does not match size and chunk size.');
  validateDirtyBitmap(b);
  return b;
}
