/**
 * The one adapter between `BlockDevice` and the file system: regular files and
 * block devices (e.g. a loop device) through positional reads and writes.
 *
 * Sparse-aware: the device remembers a watermark above which a regular file is known
 * to be all holes (a file that was empty when opened and then sized, or the tail
 * added by a resize). Zero writes above the watermark are skipped, so a fresh target
 * stays sparse; a `writeZeroes(..., { mayTrim })` that reaches the end of a regular
 * file truncates and re-extends it, which deallocates the tail.
 *
 * With `bypassCache`, writes whose offset, length and memory are aligned to
 * `DIRECT_IO_ALIGNMENT` go through a second descriptor opened with O_DIRECT (QEMU's
 * cache=none): the data travels from the caller's buffer to the device without being copied
 * into the page cache, and the final fsync has no dirty pages left to write. Everything else
 * (headers, unaligned pieces) goes through the page cache; the kernel keeps the two coherent.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { dirname } from 'node:path';
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { DeviceIoError, NotFoundError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';
import { isAddressAligned, nativeAddon, seekData } from '../native-addon.js';

export interface OpenFileOptions {
  readOnly?: boolean;
  /** Create the file if it does not exist (regular files only). */
  create?: boolean;
  /** With `create`: fail if the file exists. */
  exclusive?: boolean;
  /** Set the file's size (regular files only: sparse extend or truncate). */
  size?: number;
  /**
   * `flush()` and `sync()` do nothing (QEMU's cache=unsafe): data reaches the disk whenever the
   * kernel writes it back. It survives a killed process, not a power loss or kernel crash.
   */
  ignoreFlush?: boolean;
  /**
   * Write aligned data with O_DIRECT, past the page cache (see the module comment). Where the
   * file system refuses O_DIRECT, or the native module that finds buffer addresses is missing,
   * every write goes through the page cache and `cacheBypass.unavailable` says why.
   */
  bypassCache?: boolean;
  /**
   * Report a regular file's real holes from `extents()` (lseek SEEK_DATA/SEEK_HOLE through the native
   * module; `capabilities.extents` says whether that is available). Off by default: callers that
   * read holes as zeros anyway need no extra system calls.
   */
  seekHoles?: boolean;
}

/** Offset, length and memory alignment of O_DIRECT writes: the largest common logical block size. */
export const DIRECT_IO_ALIGNMENT = 4096;

/** How much of a device's writing went past the page cache (`bypassCache`). */
export interface CacheBypassStats {
  /** Bytes written with O_DIRECT. */
  bytes: number;
  /** Bytes written through the page cache (headers, unaligned pieces, or everything when unavailable). */
  cachedBytes: number;
  /** Why O_DIRECT is not (or no longer) used, when it was asked for. */
  unavailable?: string;
}

/** What `statPath` reports about a path (without opening it for I/O). */
export interface PathInfo {
  exists: boolean;
  isBlockDevice: boolean;
  isFile: boolean;
  isDirectory: boolean;
  /** Bytes (block devices: from sysfs). 0 when absent. */
  size: number;
  /** Allocated bytes (st_blocks * 512). */
  allocated: number;
  /** `dev:ino`, to notice two names of the same file. */
  identity: string;
}

const ZERO_CHUNK = 1 << 20;

export class FileDevice implements BlockDevice {
  readonly alignment = 1;
  readonly capabilities: DeviceCapabilities;
  #size: number;
  #closed = false;
  /** `directIo` calls still running: close() waits, so their fd is never closed (and reused) under them. */
  readonly #through = new Set<Promise<void>>();
  /** Every byte in `[#holeFrom, size)` is known to be an unallocated hole (reads zeros). */
  #holeFrom: number;
  /** The O_DIRECT descriptor of `bypassCache` (closed by close(): writes may still be using it). */
  #direct: fsp.FileHandle | undefined;
  /** False once the device has refused an O_DIRECT write. */
  #directWorks = true;
  readonly #bypass: CacheBypassStats = { bytes: 0, cachedBytes: 0 };

  private constructor(
    readonly path: string,
    private readonly handle: fsp.FileHandle,
    size: number,
    readonly readOnly: boolean,
    readonly isBlockDevice: boolean,
    holeFrom: number,
    private readonly ignoreFlush: boolean,
    private readonly seekHoles: boolean,
  ) {
    this.#size = size;
    this.#holeFrom = holeFrom;
    // Without seekHoles, holes are tracked only above a watermark (no fallocate in Node), so no capability is claimed.
    this.capabilities = { discard: false, writeZeroes: false, extents: seekHoles, resize: !isBlockDevice };
  }

  static async open(path: string, options: OpenFileOptions = {}): Promise<FileDevice> {
    const readOnly = options.readOnly === true;
    let flags = readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
    if (options.create && !readOnly) flags |= fsc.O_CREAT | (options.exclusive ? fsc.O_EXCL : 0);
    let handle: fsp.FileHandle;
    try {
      handle = await fsp.open(path, flags, 0o600);
    } catch (err) {
      throw fileError(path, err);
    }
    try {
      const st = await handle.stat();
      const isBlock = st.isBlockDevice();
      let size: number;
      let holeFrom: number;
      if (isBlock) {
        size = await blockDeviceSize(st.rdev);
        holeFrom = size;
      } else {
        if (options.size !== undefined && !readOnly) {
          await handle.truncate(options.size);
          size = options.size;
          // An empty file extended by ftruncate is one hole; a shrunk or grown file keeps its old bytes below the old size.
          holeFrom = Math.min(st.size, size);
        } else {
          size = st.size;
          holeFrom = size;
        }
      }
      const seekHoles = options.seekHoles === true && !isBlock && seekData(handle.fd, 0, true) !== undefined;
      const device = new FileDevice(path, handle, size, readOnly, isBlock, holeFrom, options.ignoreFlush === true, seekHoles);
      if (options.bypassCache && !readOnly) await device.#openDirect();
      return device;
    } catch (err) {
      await handle.close();
      throw err instanceof DeviceIoError ? err : fileError(path, err);
    }
  }

  get size(): number {
    return this.#size;
  }

  /** What `bypassCache` achieved so far (zeros when it was not asked for). */
  get cacheBypass(): Readonly<CacheBypassStats> {
    return { ...this.#bypass };
  }

  async #openDirect(): Promise<void> {
    if (fsc.O_DIRECT === undefined) return void (this.#bypass.unavailable = 'this platform has no O_DIRECT');
    if (!nativeAddon()) {
      return void (this.#bypass.unavailable = 'the native module is not built (buffer addresses are unknown)');
    }
    try {
      // Through /proc: the very file already open (a path could have been replaced since).
      this.#direct = await fsp.open(`/proc/self/fd/${this.handle.fd}`, fsc.O_WRONLY | fsc.O_DIRECT);
    } catch (err) {
      this.#bypass.unavailable = `O_DIRECT open failed: ${(err as NodeJS.ErrnoException)?.code ?? String(err)}`;
    }
  }

  #check(offset: number, length: number, writing: boolean): void {
    if (this.#closed) throw new DeviceIoError(`${this.path}: device is closed`);
    if (writing && this.readOnly) throw new ReadOnlyDeviceError(`${this.path} is open read-only.`);
    if (!rangeInside(offset, length, this.#size)) {
      throw new OutOfRangeError(`${this.path}: range ${offset}+${length} is outside the ${this.#size}-byte device`);
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, false);
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.handle.read(buf, done, buf.length - done, offset + done).catch((err) => {
        throw fileError(this.path, err);
      });
      if (bytesRead === 0) {
        // A regular file shorter than its recorded size (truncated behind our back): zeros, as a hole would read.
        buf.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, true);
    if (offset + buf.length > this.#holeFrom) this.#holeFrom = offset + buf.length;
    const direct = this.#directWorks ? this.#direct : undefined;
    if (direct && offset % DIRECT_IO_ALIGNMENT === 0 && buf.length % DIRECT_IO_ALIGNMENT === 0 && isAddressAligned(buf, DIRECT_IO_ALIGNMENT)) {
      try {
        await writeFully(direct, buf, offset);
        this.#bypass.bytes += buf.length;
        return;
      } catch (err) {
        // EINVAL: the device wants a larger alignment than ours. Write through the cache from now on.
        if ((err as NodeJS.ErrnoException)?.code !== 'EINVAL') throw fileError(this.path, err);
        this.#bypass.unavailable = 'the device refused an aligned O_DIRECT write (EINVAL)';
        this.#directWorks = false;
      }
    }
    await writeFully(this.handle, buf, offset).catch((err) => {
      throw fileError(this.path, err);
    });
    this.#bypass.cachedBytes += buf.length;
  }

  async directIo(access: 'read' | 'write', offset: number, length: number, io: (fd: number, position: number) => Promise<void>): Promise<void> {
    const writing = access === 'write';
    this.#check(offset, length, writing);
    if (writing && offset + length > this.#holeFrom) this.#holeFrom = offset + length;
    const run = io(this.handle.fd, offset).catch((err) => {
      throw fileError(this.path, err);
    });
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.#through.add(settled);
    try {
      await run;
    } finally {
      this.#through.delete(settled);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.ignoreFlush) return;
    await this.handle.datasync().catch((err) => {
      throw fileError(this.path, err);
    });
  }

  /**
   * Zeros `[offset, offset+length)`. Bytes above the hole watermark already read as zeros and
   * are not written; with `mayTrim`, a range reaching the end of a regular file is deallocated
   * by truncating and re-extending the file (Node has no fallocate(PUNCH_HOLE)).
   */
  async writeZeroes(offset: number, length: number, options: { mayTrim?: boolean } = {}): Promise<void> {
    this.#check(offset, length, true);
    const end = offset + length;
    if (length === 0 || offset >= this.#holeFrom) return;
    if (options.mayTrim && !this.isBlockDevice && end === this.#size) {
      await this.handle.truncate(offset).catch((err) => {
        throw fileError(this.path, err);
      });
      await this.handle.truncate(this.#size).catch((err) => {
        throw fileError(this.path, err);
      });
      this.#holeFrom = offset;
      return;
    }
    const stop = Math.min(end, this.#holeFrom);
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, stop - offset));
    for (let pos = offset; pos < stop; pos += zeros.length) {
      const n = Math.min(zeros.length, stop - pos);
      await this.#writeAll(n === zeros.length ? zeros : zeros.subarray(0, n), pos);
    }
  }

  async #writeAll(buf: Uint8Array, offset: number): Promise<void> {
    await writeFully(this.handle, buf, offset).catch((err) => {
      throw fileError(this.path, err);
    });
  }

  async discard(offset: number, length: number): Promise<void> {
    // Node offers no fallocate(PUNCH_HOLE); zeros keep the contract (reads return zeros), and a tail is deallocated.
    await this.writeZeroes(offset, length, { mayTrim: true });
  }

  /**
   * With `seekHoles`: the file's holes and data as lseek SEEK_HOLE/SEEK_DATA report them. Otherwise the
   * known-hole tail of a regular file is a hole and everything else data.
   */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length, false);
    if (length === 0) return [];
    if (this.seekHoles) return this.#seekExtents(offset, length);
    const end = offset + length;
    const split = Math.min(Math.max(this.#holeFrom, offset), end);
    const out: Extent[] = [];
    if (split > offset) out.push({ offset, length: split - offset, hole: false, zero: false });
    if (end > split) out.push({ offset: split, length: end - split, hole: true, zero: true });
    return out;
  }

  #seekExtents(offset: number, length: number): Extent[] {
    const end = offset + length;
    const out: Extent[] = [];
    const push = (o: number, n: number, hole: boolean) => {
      if (n <= 0) return;
      const last = out[out.length - 1];
      if (last && last.hole === hole && last.offset + last.length === o) last.length += n;
      else out.push({ offset: o, length: n, hole, zero: hole });
    };
    let pos = offset;
    while (pos < end) {
      const data = seekData(this.handle.fd, pos, false);
      if (data === undefined) return [{ offset, length, hole: false, zero: false }];
      const dataAt = data === 'end' ? end : Math.min(data, end);
      push(pos, dataAt - pos, true);
      if (dataAt >= end) break;
      const hole = seekData(this.handle.fd, dataAt, true);
      const holeAt = hole === undefined || hole === 'end' ? end : Math.min(hole, end);
      push(dataAt, holeAt - dataAt, false);
      pos = holeAt;
    }
    return out;
  }

  /** Makes data and metadata (size) durable: fsync, for a file about to be renamed into place. */
  async sync(): Promise<void> {
    if (this.readOnly || this.ignoreFlush) return;
    await this.handle.sync().catch((err) => {
      throw fileError(this.path, err);
    });
  }

  /** Grows (sparsely) or shrinks a regular file. */
  async resize(size: number): Promise<void> {
    if (this.isBlockDevice) throw new DeviceIoError(`${this.path}: a block device cannot be resized`);
    if (this.readOnly) throw new ReadOnlyDeviceError(`${this.path} is open read-only.`);
    await this.handle.truncate(size).catch((err) => {
      throw fileError(this.path, err);
    });
    // Growing adds a hole above the old size (the watermark stays); shrinking cuts the known-hole range.
    if (size < this.#size) this.#holeFrom = Math.min(this.#holeFrom, size);
    this.#size = size;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(this.#through);
    await this.#direct?.close();
    this.#direct = undefined;
    await this.handle.close();
  }
}

/** pwrite until every byte is written (a short write is not an error). */
async function writeFully(handle: fsp.FileHandle, buf: Uint8Array, offset: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await handle.write(buf, done, buf.length - done, offset + done);
    done += bytesWritten;
  }
}

/**
 * Facts about a path without opening it for I/O; `exists: false` when it is absent.
 *
 * @example
 * const info = await statPath('/dev/loop0'); // { exists: true, isBlockDevice: true, size: 1073741824, ... }
 */
export async function statPath(path: string): Promise<PathInfo> {
  let st;
  try {
    st = await fsp.stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return { exists: false, isBlockDevice: false, isFile: false, isDirectory: false, size: 0, allocated: 0, identity: '' };
    }
    throw fileError(path, err);
  }
  const isBlock = st.isBlockDevice();
  return {
    exists: true,
    isBlockDevice: isBlock,
    isFile: st.isFile(),
    isDirectory: st.isDirectory(),
    size: isBlock ? await blockDeviceSize(st.rdev) : st.size,
    allocated: st.blocks * 512,
    identity: `${st.dev}:${st.ino}`,
  };
}

/**
 * Renames `from` to `to` (atomically replacing `to`) and fsyncs the directory, so after a
 * crash the name points at either the old or the complete new file. Both must be in one directory.
 * With `syncDir` false the directory is not synced (a killed process still never leaves a
 * half-written file under the name; a power loss may).
 */
export async function renameDurably(from: string, to: string, syncDir = true): Promise<void> {
  try {
    await fsp.rename(from, to);
  } catch (err) {
    throw fileError(to, err);
  }
  if (syncDir) await syncDirectory(dirname(to));
}

/** fsyncs a directory, making renames and creations in it durable. */
export async function syncDirectory(dir: string): Promise<void> {
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(dir, fsc.O_RDONLY);
    await handle.sync();
  } catch (err) {
    throw fileError(dir, err);
  } finally {
    await handle?.close();
  }
}

/** Removes a file if it exists (no error when it is already gone). */
export async function removeFile(path: string): Promise<void> {
  await fsp.rm(path, { force: true }).catch((err) => {
    throw fileError(path, err);
  });
}

async function blockDeviceSize(rdev: number): Promise<number> {
  // Node has no BLKGETSIZE64 ioctl; sysfs reports the size in 512-byte sectors.
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
  const text = await fsp.readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8');
  return Number.parseInt(text.trim(), 10) * 512;
}

export function fileError(path: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new NotFoundError(`${path}: no such file or directory`);
  if (code === 'EEXIST') return new DeviceIoError(`${path}: already exists`, { cause: err });
  return new DeviceIoError(`${path}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}
