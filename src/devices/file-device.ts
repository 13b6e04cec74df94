/**
 * The one adapter between `BlockDevice` and the file system: regular files and
 * block devices (e.g. a loop device) through positional reads and writes.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { DeviceIoError, NotFoundError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';

export interface OpenFileOptions {
  readOnly?: boolean;
  /** Create the file if it does not exist (regular files only). */
  create?: boolean;
  /** With `create`: fail if the file exists. */
  exclusive?: boolean;
  /** Set the file's size (regular files only: sparse extend or truncate). */
  size?: number;
}

const ZERO_CHUNK = 1 << 20;

export class FileDevice implements BlockDevice {
  readonly alignment = 1;
  readonly capabilities: DeviceCapabilities;
  #size: number;
  #closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: fsp.FileHandle,
    size: number,
    readonly readOnly: boolean,
    readonly isBlockDevice: boolean,
  ) {
    this.#size = size;
    this.capabilities = { discard: false, writeZeroes: false, extents: false, resize: !isBlockDevice };
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
      if (isBlock) {
        size = await blockDeviceSize(st.rdev);
      } else {
        if (options.size !== undefined && !readOnly) {
          await handle.truncate(options.size);
          size = options.size;
        } else {
          size = st.size;
        }
      }
      return new FileDevice(path, handle, size, readOnly, isBlock);
    } catch (err) {
      await handle.close();
      throw err instanceof DeviceIoError ? err : fileError(path, err);
    }
  }

  get size(): number {
    return this.#size;
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
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done).catch((err) => {
        throw fileError(this.path, err);
      });
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.handle.datasync().catch((err) => {
      throw fileError(this.path, err);
    });
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length, true);
    const zeros = new Uint8Array(Math.min(ZERO_CHUNK, length));
    for (let pos = offset; pos < offset + length; pos += zeros.length) {
      const n = Math.min(zeros.length, offset + length - pos);
      await this.write(n === zeros.length ? zeros : zeros.subarray(0, n), pos);
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    // Node offers no fallocate(PUNCH_HOLE); writing zeros keeps the contract (reads return zeros).
    await this.writeZeroes(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length, false);
    return length === 0 ? [] : [{ offset, length, hole: false, zero: false }];
  }

  /** Grows (sparsely) or shrinks a regular file. */
  async resize(size: number): Promise<void> {
    if (this.isBlockDevice) throw new DeviceIoError(`${this.path}: a block device cannot be resized`);
    if (this.readOnly) throw new ReadOnlyDeviceError(`${this.path} is open read-only.`);
    await this.handle.truncate(size).catch((err) => {
      throw fileError(this.path, err);
    });
    this.#size = size;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.handle.close();
  }
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
