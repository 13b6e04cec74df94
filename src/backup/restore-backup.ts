/**
 * `backup restore`: writes a backup's exact bytes to a new file (holes stay holes) or to an
 * existing block device at least as large as the volume.
 *
 * No half-restored target: a new file is written under a temporary name beside the target and
 * renamed into place only when every chunk was authenticated and written (and is removed on any
 * failure). A block device cannot be renamed, so every chunk is first fetched and authenticated
 * (a full read of the backup), and only then written.
 */
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { AlreadyExistsError, CancelledError, InsufficientSpaceError, IntegrityError, InvalidArgumentError } from '../errors.js';
import { FileDevice, removeFile, renameDurably, statPath } from '../devices/file-device.js';
import type { BackupManifest } from './manifest.js';
import type { Repository } from './repository.js';
import { dataRanges } from './create-backup.js';
import { allocateShared } from './seal-pool.js';
import { SEALED_OVERHEAD } from './sealed-object.js';

export interface RestoreProgress {
  bytes: number;
  total: number;
  phase: 'verify' | 'write';
}

export interface RestoreOptions {
  onProgress?: (p: RestoreProgress) => void;
  signal?: AbortSignal;
  parallel?: number;
  /**
   * Also recompute every chunk's id (HMAC of its plaintext), as `verify` does. Off by default:
   * AES-GCM already authenticates each object together with its name (the chunk id is its
   * additional data), so a changed byte, or an object stored under another id, fails either way;
   * the recomputation only guards against a writer that held the backup key and computed a wrong
   * id, and costs about half of restore's CPU time.
   */
  checkIds?: boolean;
}

export interface RestoreReport {
  id: string;
  target: string;
  size: number;
  writtenBytes: number;
  targetKind: 'new-file' | 'block-device';
}

/** Runs `work(i)` for i in [0, count) with at most `parallel` at a time; stops at the first failure. */
async function forEachParallel(count: number, parallel: number, signal: AbortSignal | undefined, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const lane = async () => {
    while (failure === undefined && next < count) {
      if (signal?.aborted) throw new CancelledError();
      const i = next++;
      try {
        await work(i);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(parallel, count)) }, lane));
  if (failure !== undefined) throw failure;
}

/** Per lane: a sealed object's buffer and the plaintext chunk's, shared with the workers and 4096-aligned for O_DIRECT. */
interface LaneBuffers {
  sealed: Uint8Array;
  plain: Uint8Array;
}

/**
 * Runs `work(i, buffers)` for every chunk with `parallel` lanes, each with its own buffers, and a
 * seal pool that fetches' objects are opened on (authenticated, decompressed, id checked).
 */
async function withLanes(repo: Repository, m: BackupManifest, parallel: number, signal: AbortSignal | undefined, checkIds: boolean, work: (i: number, open: (id: string) => Promise<Uint8Array>) => Promise<void>): Promise<void> {
  const pool = repo.openSealPool();
  const lanes: LaneBuffers[] = [];
  let free: LaneBuffers[] = [];
  const take = (): LaneBuffers => {
    let b = free.pop();
    if (!b) {
      b = { sealed: allocateShared(m.chunkSize + SEALED_OVERHEAD + 8192), plain: allocateShared(m.chunkSize) };
      lanes.push(b);
    }
    return b;
  };
  try {
    await forEachParallel(m.chunks.length, parallel, signal, async (i) => {
      const b = take();
      try {
        await work(i, async (id) => {
          const sealed = await repo.readSealedChunkInto(id, b.sealed);
          const n = await pool.open(id, sealed, b.plain, checkIds);
          return b.plain.subarray(0, n);
        });
      } finally {
        free.push(b);
      }
    });
  } finally {
    free = [];
    await pool.close();
  }
}

/** Lanes for restore: enough to keep both workers, the store reads and the target writes busy. */
function restoreLanes(repo: Repository, options: RestoreOptions): number {
  return options.parallel ?? Math.max(6, repo.store.parallelism);
}

async function writeChunks(repo: Repository, m: BackupManifest, device: FileDevice, options: RestoreOptions, newFile: boolean): Promise<number> {
  let written = 0;
  let done = 0;
  await withLanes(repo, m, restoreLanes(repo, options), options.signal, options.checkIds === true, async (i, open) => {
    const id = m.chunks[i];
    const start = i * m.chunkSize;
    const end = Math.min(m.source.size, start + m.chunkSize);
    if (id === null) {
      // A new file already reads zeros here; a device must be zeroed.
      if (!newFile) await device.writeZeroes(start, end - start);
    } else {
      const plain = await open(id);
      if (plain.length !== end - start) throw new IntegrityError(`chunk ${id}: ${plain.length} bytes where backup ${m.id} needs ${end - start}.`);
      for (const [o, n] of newFile ? dataRanges(m.holes, start, end) : [[start, end - start] as [number, number]]) {
        await device.write(plain.subarray(o - start, o - start + n), o);
        written += n;
      }
    }
    done += end - start;
    options.onProgress?.({ bytes: done, total: m.source.size, phase: 'write' });
  });
  return written;
}

/** Restores backup `id` to `target`. */
export async function restoreBackup(repo: Repository, id: string, target: string, options: RestoreOptions = {}): Promise<RestoreReport> {
  const m = await repo.getManifest(id);
  if (m.chunkSize !== repo.chunkSize && m.chunkSize <= 0) throw new InvalidArgumentError(`manifest ${id}: bad chunk size`);
  const info = await statPath(target);
  if (info.exists && !info.isBlockDevice) {
    throw new AlreadyExistsError(`${target} exists; restore writes a new file or an existing block device.`);
  }
  if (info.isBlockDevice) {
    if (info.size < m.source.size) throw new InsufficientSpaceError(`${target} holds ${info.size} bytes; backup ${id} needs ${m.source.size}.`);
    // Authenticate everything before the first write: a damaged backup leaves the device untouched.
    let checked = 0;
    await withLanes(repo, m, restoreLanes(repo, options), options.signal, options.checkIds === true, async (i, open) => {
      const cid = m.chunks[i];
      if (cid !== null) await open(cid);
      checked += Math.min(m.source.size, (i + 1) * m.chunkSize) - i * m.chunkSize;
      options.onProgress?.({ bytes: checked, total: m.source.size, phase: 'verify' });
    });
    const device = await FileDevice.open(target, { bypassCache: true });
    try {
      const written = await writeChunks(repo, m, device, options, false);
      await device.flush();
      return { id, target, size: m.source.size, writtenBytes: written, targetKind: 'block-device' };
    } finally {
      await device.close();
    }
  }
  const temp = join(dirname(target), `.${basename(target)}.restore-${randomBytes(4).toString('hex')}`);
  // Whole aligned chunks go to the disk with O_DIRECT, past the page cache (the final sync then has
  // little left to write); holes are never written.
  const device = await FileDevice.open(temp, { create: true, exclusive: true, size: m.source.size, bypassCache: true });
  let ok = false;
  try {
    const written = await writeChunks(repo, m, device, options, true);
    await device.sync();
    await device.close();
    if ((await statPath(target)).exists) throw new AlreadyExistsError(`${target} appeared during the restore; the restored image is not moved over it.`);
    await renameDurably(temp, target);
    ok = true;
    return { id, target, size: m.source.size, writtenBytes: written, targetKind: 'new-file' };
  } finally {
    if (!ok) {
      await device.close().catch(() => undefined);
      await removeFile(temp).catch(() => undefined);
    }
  }
}
