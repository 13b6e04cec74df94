/**
 * The persistent dirty-chunk bitmap of a volume file (`<volume>.dirty-bitmap`, format in
 * src/backup/dirty-bitmap.ts): while `attach` serves the volume it records which backup chunks
 * were written, so the next `backup create` reads only those; the others are taken from the
 * bitmap's base backup.
 *
 * The rules that make a bitmap never hide a change:
 * - **Tied to one backup.** A bitmap says "every chunk not marked is identical to backup `base` of
 *   repository `repository`". `backup create` makes a fresh one (no bits, base = the new backup)
 *   only when it read the whole volume from an unchanged file, under the volume's writer lock.
 * - **Crash rule (as QEMU's persistent bitmaps).** A writer first makes the file say `in use`,
 *   durably (fsync, rename, fsync directory), before it writes any byte of the volume; it makes it
 *   `clean` again only after its last write and a flush of the volume. A bitmap found `in use`
 *   (the writer runs, or crashed) is not trusted: the backup hashes every chunk instead.
 * - **Bound to the file.** The bitmap records the volume's st_dev, st_ino, size and st_ctime as of
 *   the moment it became clean; any write by anything else (and any chmod, truncate, rename onto
 *   it) changes ctime, and a bitmap whose file facts differ is not trusted.
 *
 * The hot path is one bit set per write (`markRange`): bits live in memory while the volume is
 * served and are written once, when it is closed cleanly.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { LockedError } from '../errors.js';
import { renameDurably } from '../devices/file-device.js';
import { VolumeLock } from '../devices/volume-lock.js';
import { bitmapBytes, chunkCount, decodeDirtyBitmap, encodeDirtyBitmap, markRange, type DirtyBitmap } from './dirty-bitmap.js';

/** The bitmap beside `volumePath`. */
export function bitmapPathFor(volumePath: string): string {
  return `${volumePath}.dirty-bitmap`;
}

/** Chunk size of a bitmap that has no base yet (its bits mean nothing until a backup sets one). */
const DEFAULT_TRACKING_CHUNK = 1024 * 1024;

export interface FileFacts {
  dev: bigint;
  ino: bigint;
  size: number;
  ctimeNs: bigint;
  isFile: boolean;
}

export async function fileFacts(path: string): Promise<FileFacts> {
  const st = await fsp.stat(path, { bigint: true });
  return { dev: st.dev, ino: st.ino, size: Number(st.size), ctimeNs: st.ctimeNs, isFile: st.isFile() };
}

const sameFile = (b: DirtyBitmap, f: FileFacts): boolean => b.dev === f.dev && b.ino === f.ino && b.volumeSize === f.size && b.ctimeNs === f.ctimeNs;

/** The bitmap file's content: a bitmap, none, or the reason it could not be read. */
export async function readBitmapFile(path: string): Promise<{ bitmap?: DirtyBitmap; problem?: string }> {
  let bytes: Uint8Array;
  try {
    bytes = await fsp.readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { problem: 'no bitmap' };
    return { problem: `unreadable: ${(err as Error).message}` };
  }
  try {
    return { bitmap: decodeDirtyBitmap(bytes) };
  } catch (err) {
    return { problem: (err as Error).message };
  }
}

/** Writes `b` to `path` atomically and durably (a temporary file, fsync, rename, fsync of the directory). */
export async function writeBitmapFile(path: string, b: DirtyBitmap): Promise<void> {
  const temp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
  const handle = await fsp.open(temp, 'wx', 0o600);
  try {
    await handle.writeFile(encodeDirtyBitmap(b));
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await renameDurably(temp, path);
  } catch (err) {
    await fsp.rm(temp, { force: true });
    throw err;
  }
}

/**
 * The writer's side (`attach`): `start` marks the bitmap in use (carrying on a clean one that
 * belongs to this file), `wrap` gives the device whose writes are recorded, `finish` (after the
 * last write and a flush) makes it clean with the new bits.
 */
export class DirtyTracker {
  #finished = false;

  private constructor(
    readonly path: string,
    readonly volumePath: string,
    private readonly bitmap: DirtyBitmap,
    /** Whether the bitmap carried on from a clean one (a base the next backup can use). */
    readonly continued: boolean,
  ) {}

  /** Call with the volume's writer lock held and before the first write. */
  static async start(volumePath: string): Promise<DirtyTracker> {
    const path = bitmapPathFor(volumePath);
    const facts = await fileFacts(volumePath);
    const { bitmap: old } = await readBitmapFile(path);
    const carry = old !== undefined && old.state === 'clean' && old.base !== undefined && sameFile(old, facts);
    const chunkSize = carry ? old.chunkSize : DEFAULT_TRACKING_CHUNK;
    const bitmap: DirtyBitmap = {
      state: 'in-use',
      chunkSize,
      volumeSize: facts.size,
      dev: facts.dev,
      ino: facts.ino,
      ctimeNs: 0n,
      ...(carry ? { repository: old.repository!, base: old.base! } : {}),
      pid: process.pid,
      bits: carry ? old.bits.slice() : new Uint8Array(bitmapBytes(chunkCount(facts.size, chunkSize))),
    };
    await writeBitmapFile(path, bitmap);
    return new DirtyTracker(path, volumePath, bitmap, carry);
  }

  get chunkSize(): number {
    return this.bitmap.chunkSize;
  }

  /** @internal The live bits (tests). */
  get bits(): Uint8Array {
    return this.bitmap.bits;
  }

  mark(offset: number, length: number): void {
    markRange(this.bitmap.bits, this.bitmap.chunkSize, offset, length);
  }

  /** The container device with every write recorded here. */
  wrap<D extends BlockDevice>(device: D): BlockDevice {
    return new DirtyTrackingDevice(device, this);
  }

  /** After the last write and a flush of the volume: the bitmap becomes clean, bound to the file as it is now. */
  async finish(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    const facts = await fileFacts(this.volumePath);
    if (facts.size !== this.bitmap.volumeSize || facts.dev !== this.bitmap.dev || facts.ino !== this.bitmap.ino) {
      // Not the file it was started for: leave it in use (untrusted).
      return;
    }
    await writeBitmapFile(this.path, { ...this.bitmap, state: 'clean', pid: 0, ctimeNs: facts.ctimeNs });
  }
}

/** A `BlockDevice` decorator: every write, zeroing and discard sets the bits of the chunks it touches first. */
export class DirtyTrackingDevice implements BlockDevice {
  readonly writeConsuming?: (buf: Uint8Array, offset: number) => Promise<void>;
  readonly directIo?: BlockDevice['directIo'];

  constructor(
    private readonly inner: BlockDevice,
    private readonly tracker: DirtyTracker,
  ) {
    if (inner.writeConsuming) {
      const wc = inner.writeConsuming.bind(inner);
      this.writeConsuming = (buf, offset) => {
        tracker.mark(offset, buf.length);
        return wc(buf, offset);
      };
    }
    if (inner.directIo) {
      const dio = inner.directIo.bind(inner);
      this.directIo = (access, offset, length, io) => {
        if (access === 'write') tracker.mark(offset, length);
        return dio(access, offset, length, io);
      };
    }
  }

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get capabilities(): DeviceCapabilities {
    return this.inner.capabilities;
  }
  get alignment(): number {
    return this.inner.alignment;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.inner.read(buf, offset);
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    this.tracker.mark(offset, buf.length);
    return this.inner.write(buf, offset);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  writeZeroes(offset: number, length: number, options?: { mayTrim?: boolean }): Promise<void> {
    this.tracker.mark(offset, length);
    return this.inner.writeZeroes(offset, length, options);
  }

  discard(offset: number, length: number): Promise<void> {
    this.tracker.mark(offset, length);
    return this.inner.discard(offset, length);
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    return this.inner.extents(offset, length);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** What a backup may use: the bitmap and why not when it may not. */
export interface BitmapForBackup {
  /** The file as the backup found it before reading (for `resetAfterBackup`). */
  facts: FileFacts;
  bitmap?: DirtyBitmap;
  /** Why the bitmap is not used (undefined when it is). */
  unused?: string;
}

/**
 * Reads the bitmap of `volumePath` for a backup into repository `repositoryId` with `chunkSize`:
 * returned only when it is clean, has a base in this repository, matches the chunk size, and the
 * file is the one (and as it was) when the bitmap became clean.
 */
export async function bitmapForBackup(volumePath: string, repositoryId: string, chunkSize: number): Promise<BitmapForBackup> {
  const facts = await fileFacts(volumePath);
  if (!facts.isFile) return { facts, unused: 'not a regular file' };
  const { bitmap, problem } = await readBitmapFile(bitmapPathFor(volumePath));
  if (!bitmap) return { facts, unused: problem ?? 'no bitmap' };
  if (bitmap.state !== 'clean') return { facts, unused: `in use by process ${bitmap.pid}, or its writer did not shut down cleanly` };
  if (bitmap.base === undefined) return { facts, unused: 'no base backup yet' };
  if (bitmap.repository !== repositoryId) return { facts, unused: 'its base is in another repository' };
  if (bitmap.chunkSize !== chunkSize) return { facts, unused: 'another chunk size' };
  if (!sameFile(bitmap, facts)) return { facts, unused: 'the file changed outside attach (size, inode or ctime differ)' };
  return { facts, bitmap };
}

/**
 * After backup `backupId` read the whole volume (or only the dirty chunks of a trusted bitmap):
 * a fresh clean bitmap with that base, if the file is still as it was before the backup read it
 * and nobody holds its writer lock. Returns what happened.
 */
export async function resetAfterBackup(volumePath: string, before: FileFacts, repositoryId: string, chunkSize: number, backupId: string): Promise<'reset' | 'locked' | 'changed'> {
  let lock: VolumeLock;
  try {
    lock = await VolumeLock.acquire(volumePath);
  } catch (err) {
    if (err instanceof LockedError) return 'locked';
    throw err;
  }
  try {
    const now = await fileFacts(volumePath);
    const path = bitmapPathFor(volumePath);
    if (now.dev !== before.dev || now.ino !== before.ino || now.size !== before.size || now.ctimeNs !== before.ctimeNs) {
      // Written while the backup ran: the backup may hold older data for some chunk. No base.
      await fsp.rm(path, { force: true });
      return 'changed';
    }
    await writeBitmapFile(path, {
      state: 'clean',
      chunkSize,
      volumeSize: now.size,
      dev: now.dev,
      ino: now.ino,
      ctimeNs: now.ctimeNs,
      repository: repositoryId,
      base: backupId,
      pid: 0,
      bits: new Uint8Array(bitmapBytes(chunkCount(now.size, chunkSize))),
    });
    return 'reset';
  } finally {
    await lock.release();
  }
}
