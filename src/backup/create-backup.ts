/**
 * `backup create`: reads a volume's container bytes chunk by chunk and stores the chunks the
 * repository does not have yet, then the manifest. Encrypted volumes are read as they are on disk
 * (LUKS header + ciphertext): no key is asked for and nothing is decrypted.
 *
 * Holes are found before reading (FileDevice `seekHoles`: lseek SEEK_DATA/SEEK_HOLE) and never
 * read; a chunk that is all holes, or reads as all zeros, is stored as `null` (no object).
 * A chunk is new when its id (HMAC of its plaintext) is not among the repository's chunks, which
 * gives incremental backups and dedup across volumes in one rule.
 *
 * Order of writes: chunks (in parallel) -> all chunk PUTs acknowledged -> manifest. A crash at any
 * point leaves only unreferenced chunks (garbage for prune), never a manifest naming a missing chunk.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { BlockDevice, Extent } from '../block-device.js';
import { CancelledError } from '../errors.js';
import { detectFormatFromBytes } from '../images/detect.js';
import { LuksVolume } from '../luks/volume.js';
import { HOLE_ALIGNMENT, newBackupId, type BackupManifest, type BackupStats, type LuksInfo, type SourceFormat } from './manifest.js';
import type { Repository } from './repository.js';
import { RepositoryLock } from './repository-lock.js';
import { countDirty, isDirty } from './dirty-bitmap.js';
import { allocateShared } from './seal-pool.js';
import { SEALED_OVERHEAD } from './sealed-object.js';
import { bitmapForBackup, resetAfterBackup, type FileFacts } from './dirty-tracking.js';

export interface BackupProgress {
  bytes: number;
  total: number;
}

export interface CreateBackupOptions {
  /** The source's name in the manifest (its path). */
  sourcePath: string;
  name?: string;
  onProgress?: (p: BackupProgress) => void;
  signal?: AbortSignal;
  /** Chunk uploads in flight (default: the store's parallelism). */
  parallel?: number;
  /**
   * The volume's file path, to use its dirty-chunk bitmap (src/backup/dirty-tracking.ts) when it
   * can be trusted, and to make a fresh one based on this backup afterwards.
   */
  dirtyBitmap?: { volumePath: string };
}

/** How the dirty-chunk bitmap took part in a backup. */
export interface BitmapUse {
  /** The base backup whose chunks were taken for every chunk not marked dirty. */
  base?: string;
  dirtyChunks?: number;
  /** Why the bitmap was not used. */
  unused?: string;
  /** After the backup: a fresh bitmap based on it ('reset'), or why not. */
  after?: 'reset' | 'locked' | 'changed' | 'failed';
}

export interface BackupResult {
  manifest: BackupManifest;
  bitmap?: BitmapUse;
}

/** Hole ranges of a device, shrunk to 4096-byte boundaries (a partial block is read as data). */
export function alignedHoles(extents: Extent[], size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const e of extents) {
    if (!e.hole) continue;
    const start = Math.ceil(e.offset / HOLE_ALIGNMENT) * HOLE_ALIGNMENT;
    const rawEnd = e.offset + e.length;
    const end = rawEnd === size ? size : Math.floor(rawEnd / HOLE_ALIGNMENT) * HOLE_ALIGNMENT;
    if (end <= start) continue;
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === start) last[1] += end - start;
    else out.push([start, end - start]);
  }
  return out;
}

/** The parts of `[start, end)` not covered by `holes` (sorted), from hole index `from`. */
export function dataRanges(holes: Array<[number, number]>, start: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let pos = start;
  for (const [o, n] of holes) {
    if (o + n <= pos) continue;
    if (o >= end) break;
    if (o > pos) out.push([pos, o - pos]);
    pos = Math.max(pos, o + n);
    if (pos >= end) break;
  }
  if (pos < end) out.push([pos, end - pos]);
  return out;
}

async function describeSource(device: BlockDevice): Promise<{ format: SourceFormat; luks?: LuksInfo }> {
  const head = new Uint8Array(Math.min(4096, device.size));
  if (head.length > 0) await device.read(head, 0);
  const format = detectFormatFromBytes(head);
  if (format !== 'luks1' && format !== 'luks2') return { format };
  // Only the header is parsed (for the manifest); no keyslot is opened, no key is needed.
  const volume = await LuksVolume.open(device, { readOnly: true });
  const header = new Uint8Array(volume.dataOffset);
  await device.read(header, 0);
  return {
    format,
    luks: { version: volume.version, uuid: volume.uuid, dataOffset: volume.dataOffset, headerSha256: createHash('sha256').update(header).digest('hex') },
  };
}

/** Finds the newest backup of the same source, for the manifest's `parent`. */
async function findParent(repo: Repository, sourcePath: string): Promise<string | undefined> {
  const ids = await repo.listBackupIds();
  const recent = await Promise.all(ids.slice(-16).map((id) => repo.getManifest(id).catch(() => undefined)));
  // Newest by creation time (ids carry whole seconds only).
  const same = recent.filter((m): m is BackupManifest => m?.source.path === sourcePath).sort((a, b) => b.created.localeCompare(a.created) || b.id.localeCompare(a.id));
  return same[0]?.id;
}

/** Backs up `device` into `repo`; returns the manifest written. */
export async function createBackup(repo: Repository, device: BlockDevice, options: CreateBackupOptions): Promise<BackupManifest> {
  return (await createBackupWithReport(repo, device, options)).manifest;
}

/** `createBackup`, also reporting how the dirty-chunk bitmap was used. */
export async function createBackupWithReport(repo: Repository, device: BlockDevice, options: CreateBackupOptions): Promise<BackupResult> {
  const lock = await RepositoryLock.acquire(repo.store, 'shared', 'backup create');
  try {
    return await run(repo, device, options);
  } finally {
    await lock.release();
  }
}

/** The bitmap and its base manifest when both can be used for this backup. */
async function bitmapBase(repo: Repository, volumePath: string, size: number): Promise<{ facts?: FileFacts; use: BitmapUse; bits?: Uint8Array; base?: BackupManifest }> {
  let found: Awaited<ReturnType<typeof bitmapForBackup>>;
  try {
    found = await bitmapForBackup(volumePath, repo.id, repo.chunkSize);
  } catch (err) {
    return { use: { unused: `cannot read: ${(err as Error).message}` } };
  }
  const { facts, bitmap } = found;
  if (!bitmap) return { facts, use: { unused: found.unused ?? 'no bitmap' } };
  if (facts.size !== size) return { facts, use: { unused: 'the device size differs from the file size' } };
  const base = await repo.getManifest(bitmap.base!).catch(() => undefined);
  if (!base) return { facts, use: { unused: `its base backup ${bitmap.base} is not in the repository` } };
  if (base.source.size !== size || base.chunkSize !== repo.chunkSize) return { facts, use: { unused: `its base backup ${bitmap.base} has another size or chunk size` } };
  return { facts, use: { base: base.id, dirtyChunks: countDirty(bitmap.bits, base.chunks.length) }, bits: bitmap.bits, base };
}

async function run(repo: Repository, device: BlockDevice, options: CreateBackupOptions): Promise<BackupResult> {
  const size = device.size;
  const chunkSize = repo.chunkSize;
  const count = Math.ceil(size / chunkSize);
  const tracked = options.dirtyBitmap ? await bitmapBase(repo, options.dirtyBitmap.volumePath, size) : undefined;
  const source = await describeSource(device);
  const extents = device.capabilities.extents && size > 0 ? await device.extents(0, size) : [];
  const holes = alignedHoles(extents, size);
  const [known, parent] = await Promise.all([repo.listChunks(), findParent(repo, options.sourcePath)]);
  const base = tracked?.base;
  const bits = tracked?.bits;

  const stats: BackupStats = { dataBytes: 0, newChunks: 0, newBytes: 0, storedBytes: 0, reusedChunks: 0, zeroChunks: 0 };
  const chunks: Array<string | null> = new Array<string | null>(count).fill(null);
  const lanes = Math.max(2, options.parallel ?? repo.store.parallelism);
  let done = 0;
  let next = 0;
  let failure: unknown;

  // Each lane takes the next chunk: read (holes skipped), hash and seal on the worker threads, store.
  // Several lanes keep the disk, both cores and the store busy at once; ids go to their index.
  const readChunk = async (i: number, scratch: Uint8Array): Promise<{ buf: Uint8Array; data: number } | null> => {
    const start = i * chunkSize;
    const end = Math.min(size, start + chunkSize);
    const ranges = dataRanges(holes, start, end);
    if (ranges.length === 0) return null;
    const buf = scratch.subarray(0, end - start);
    // Only the hole parts need zeros; a chunk that is all data is overwritten whole.
    if (ranges.length !== 1 || ranges[0]![1] !== end - start) buf.fill(0);
    let data = 0;
    for (const [o, n] of ranges) {
      await device.read(buf.subarray(o - start, o - start + n), o);
      data += n;
    }
    return { buf, data };
  };
  // Each lane's chunk and sealed-object buffers are shared memory the workers work in, 4096-aligned so
  // the file store writes sealed chunks from them with O_DIRECT.
  const pool = repo.openSealPool();
  const lane = async () => {
    const scratch = allocateShared(Math.min(chunkSize, Math.max(size, 1)));
    const sealed = allocateShared(chunkSize + SEALED_OVERHEAD + 8192);
    while (failure === undefined && next < count) {
      if (options.signal?.aborted) throw new CancelledError();
      const i = next++;
      const len = Math.min(size, (i + 1) * chunkSize) - i * chunkSize;
      // Not written since the bitmap's base backup: the base's chunk, without reading.
      const unchanged = base && bits && !isDirty(bits, i) ? base.chunks[i] : undefined;
      if (unchanged === null || (unchanged !== undefined && known.has(unchanged))) {
        chunks[i] = unchanged;
        if (unchanged === null) stats.zeroChunks++;
        else stats.reusedChunks++;
        done += len;
        options.onProgress?.({ bytes: done, total: size });
        continue;
      }
      const got = await readChunk(i, scratch);
      if (got) stats.dataBytes += got.data;
      const hashed = got ? await pool.hash(got.buf) : { zero: true };
      if (!got || hashed.zero) {
        stats.zeroChunks++;
      } else {
        const id = hashed.id!;
        chunks[i] = id;
        // Checked and recorded with no await in between: two lanes never both store one id.
        if (known.has(id)) {
          stats.reusedChunks++;
        } else {
          known.add(id);
          const { length } = await pool.seal(id, got.buf, sealed);
          await repo.putSealedChunk(id, sealed.subarray(0, length));
          stats.newChunks++;
          stats.newBytes += got.buf.length;
          stats.storedBytes += length;
        }
      }
      done += len;
      options.onProgress?.({ bytes: done, total: size });
    }
  };
  await Promise.all(
    Array.from({ length: lanes }, () =>
      lane().catch((err) => {
        failure ??= err;
      }),
    ),
  );
  await pool.close();
  if (failure !== undefined) throw failure;
  if (options.signal?.aborted) throw new CancelledError();
  // Every chunk durable before the manifest that names them.
  await repo.store.sync?.();

  const manifest: BackupManifest = {
    format: 'brickcrypt-backup-manifest',
    version: 1,
    id: newBackupId(new Date(), randomBytes(4)),
    ...(options.name !== undefined ? { name: options.name } : {}),
    created: new Date().toISOString(),
    repository: repo.id,
    source: { path: options.sourcePath, format: source.format, size },
    ...(source.luks ? { luks: source.luks } : {}),
    chunkSize,
    chunks,
    holes,
    ...(parent ? { parent } : {}),
    ...(tracked?.use.base !== undefined ? { dirtyBitmap: { base: tracked.use.base, dirtyChunks: tracked.use.dirtyChunks! } } : {}),
    stats,
  };
  await repo.putManifest(manifest);
  let use = tracked?.use;
  if (options.dirtyBitmap && tracked?.facts?.isFile) {
    // The next backup can read only what is written from now on.
    const after = await resetAfterBackup(options.dirtyBitmap.volumePath, tracked.facts, repo.id, chunkSize, manifest.id).catch(() => 'failed' as const);
    use = { ...use, after };
  }
  return { manifest, ...(use ? { bitmap: use } : {}) };
}
