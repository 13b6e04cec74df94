/**
 * The backup manifest: one per backup, pure encode/decode/validate. It is JSON, sealed as a
 * `manifest` object named by the backup id (src/backup/sealed-object.ts), and it is the last
 * object a backup writes: a backup exists exactly when its manifest does.
 *
 * | field       | meaning                                                                      |
 * |-------------|------------------------------------------------------------------------------|
 * | format      | `brickcrypt-backup-manifest`; version 1                                      |
 * | id, name    | backup id (also the object name) and an optional label                       |
 * | created     | ISO 8601                                                                     |
 * | repository  | repository id (a manifest copied into another repository is refused)         |
 * | source      | `{ path, format: raw/luks1/luks2/qcow2, size }`: the container's bytes    |
 * | luks        | encrypted volumes: `{ version, uuid, dataOffset, headerSha256 }`; the header |
 * |             | bytes `[0, dataOffset)` are in the chunks like every other container byte   |
 * | chunkSize   | bytes per chunk; chunk i covers `[i*chunkSize, min(size, (i+1)*chunkSize))`  |
 * | chunks      | per chunk, its id (64 hex), or null when the whole range reads as zeros      |
 * | holes       | `[offset, length]` pairs, sorted, 4096-aligned (the last may end at size):   |
 * |             | ranges that were holes in the source and stay holes on restore               |
 * | parent      | the previous backup of the same source this one was compared with, if any    |
 * | dirtyBitmap | `{ base, dirtyChunks }` when a dirty-chunk bitmap was used: the chunks not   |
 * |             | marked dirty were taken from backup `base` without reading them             |
 * | stats       | `{ dataBytes, newChunks, newBytes, storedBytes, reusedChunks, zeroChunks }`  |
 */
import { IntegrityError } from '../errors.js';

export const MANIFEST_FORMAT = 'brickcrypt-backup-manifest';
export const MANIFEST_VERSION = 1;
export const HOLE_ALIGNMENT = 4096;

export type SourceFormat = 'raw' | 'luks1' | 'luks2' | 'qcow2';

export interface LuksInfo {
  version: 1 | 2;
  uuid: string;
  dataOffset: number;
  headerSha256: string;
}

export interface BackupStats {
  /** Bytes read from the source (holes excluded). */
  dataBytes: number;
  /** Chunks this backup added to the repository, their plaintext bytes and their stored (sealed) bytes. */
  newChunks: number;
  newBytes: number;
  storedBytes: number;
  reusedChunks: number;
  zeroChunks: number;
}

export interface BackupManifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  id: string;
  name?: string;
  created: string;
  repository: string;
  source: { path: string; format: SourceFormat; size: number };
  luks?: LuksInfo;
  chunkSize: number;
  chunks: Array<string | null>;
  holes: Array<[number, number]>;
  parent?: string;
  dirtyBitmap?: { base: string; dirtyChunks: number };
  stats: BackupStats;
}

const BACKUP_ID = /^\d{8}T\d{6}Z-[0-9a-f]{8}$/;

/** A new backup id: UTC time (so ids sort by age) and 32 random bits. */
export function newBackupId(now: Date, random: Uint8Array): string {
  const t = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${t}-${Buffer.from(random.subarray(0, 4)).toString('hex')}`;
}

export function isBackupId(id: string): boolean {
  return BACKUP_ID.test(id);
}

export function encodeManifest(m: BackupManifest): Uint8Array {
  validateManifest(m);
  return Buffer.from(JSON.stringify(m), 'utf8');
}

/** Decodes manifest `id`'s plaintext; any problem is an IntegrityError. */
export function decodeManifest(bytes: Uint8Array, id: string): BackupManifest {
  let m: BackupManifest;
  try {
    m = JSON.parse(Buffer.from(bytes).toString('utf8')) as BackupManifest;
  } catch {
    throw new IntegrityError(`manifest ${id}: not valid JSON.`);
  }
  validateManifest(m);
  if (m.id !== id) throw new IntegrityError(`manifest ${id}: it names itself ${m.id}.`);
  return m;
}

const isCount = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;

/** Checks the structure and its arithmetic (chunk count, hole ranges); throws IntegrityError. */
export function validateManifest(m: BackupManifest): void {
  const id = typeof m?.id === 'string' ? m.id : '?';
  const bad = (why: string): never => {
    throw new IntegrityError(`manifest ${id}: ${why}.`);
  };
  if (m === null || typeof m !== 'object') bad('not an object');
  if (m.format !== MANIFEST_FORMAT || m.version !== MANIFEST_VERSION) bad('unknown format or version');
  if (!isBackupId(m.id)) bad('bad backup id');
  if (m.name !== undefined && typeof m.name !== 'string') bad('name is not a string');
  if (typeof m.created !== 'string' || Number.isNaN(Date.parse(m.created))) bad('created is not a date');
  if (typeof m.repository !== 'string') bad('repository id missing');
  const s = m.source;
  if (!s || typeof s.path !== 'string' || !['raw', 'luks1', 'luks2', 'qcow2'].includes(s.format) || !isCount(s.size)) bad('source is incomplete');
  if (!isCount(m.chunkSize) || m.chunkSize === 0 || m.chunkSize % HOLE_ALIGNMENT !== 0) bad('chunkSize is not a positive multiple of 4096');
  if (!Array.isArray(m.chunks) || m.chunks.length !== Math.ceil(s.size / m.chunkSize)) bad(`needs ${Math.ceil(s.size / m.chunkSize)} chunk entries`);
  for (const c of m.chunks) if (c !== null && (typeof c !== 'string' || !/^[0-9a-f]{64}$/.test(c))) bad('a chunk id is not 64 hex digits');
  if (!Array.isArray(m.holes)) bad('holes is not a list');
  let end = 0;
  for (const h of m.holes) {
    if (!Array.isArray(h) || h.length !== 2 || !isCount(h[0]) || !isCount(h[1]) || h[1] === 0) bad('a hole is not [offset, length]');
    if (h[0] < end || h[0] % HOLE_ALIGNMENT !== 0 || h[0] + h[1] > s.size) bad('holes overlap, are unsorted, unaligned or past the end');
    if ((h[0] + h[1]) % HOLE_ALIGNMENT !== 0 && h[0] + h[1] !== s.size) bad('a hole ends unaligned before the end');
    end = h[0] + h[1];
  }
  if (m.luks !== undefined) {
    const l = m.luks;
    if ((l.version !== 1 && l.version !== 2) || typeof l.uuid !== 'string' || !isCount(l.dataOffset) || l.dataOffset > s.size || !/^[0-9a-f]{64}$/.test(l.headerSha256)) {
      bad('luks is incomplete');
    }
    if (s.format !== `luks${l.version}`) bad('luks version and source format disagree');
  }
  if (m.parent !== undefined && !isBackupId(m.parent)) bad('parent is not a backup id');
  if (m.dirtyBitmap !== undefined && (!isBackupId(m.dirtyBitmap.base) || !isCount(m.dirtyBitmap.dirtyChunks) || m.dirtyBitmap.dirtyChunks > m.chunks.length)) {
    bad('dirtyBitmap is not { base, dirtyChunks }');
  }
  const st = m.stats;
  if (!st || ![st.dataBytes, st.newChunks, st.newBytes, st.storedBytes, st.reusedChunks, st.zeroChunks].every(isCount)) bad('stats are incomplete');
}
