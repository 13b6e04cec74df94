/**
 * An image file in the image service as a read-only `BlockDevice`, so the data path (convert,
 * the qcow2 reader, LUKS) reads it as it reads a local file, with no temporary copy.
 *
 * One long download (`GET .../file`, then `Range: bytes=N-` to resume) serves reads that
 * move forward through the file; a read a little ahead skips (reads and drops) the gap.
 * A read elsewhere (a qcow2 L1/L2 table near the end, a header read again) is a separate
 * bounded range request, so the long download keeps its place.
 *
 * Every byte of the long download passes once, in file order, through `observe` (hashes,
 * a signature verifier); `finish()` drains the rest of the file, so the observers have seen
 * exactly the whole file. A dropped connection resumes at the byte where it stopped (up to
 * `resumeAttempts` times in a row), and every resumed part must come from the same image
 * data (same size and md5 as the first answer).
 */
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { rangeInside } from '../block-device.js';
import { BackendUnavailableError, BrickcryptError, CancelledError, IntegrityError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';
import { isTransientImageServiceError, type GlanceClient, type ImageDataStream } from './glance-client.js';

export interface RemoteImageDeviceOptions {
  /**
   * Called with every byte of the file exactly once, in order (the chunk is only valid during
   * the call); a returned promise holds the download back (a hash on another thread catching up).
   */
  observe?: (chunk: Uint8Array) => void | Promise<void>;
  /** Consecutive resumes after dropped connections before giving up (default 5). */
  resumeAttempts?: number;
  /** Forward gaps up to this many bytes are read through instead of a new request (default 8 MiB). */
  skipLimit?: number;
  signal?: AbortSignal;
}

const DEFAULT_SKIP = 8 << 20;

export class RemoteImageDevice implements BlockDevice {
  readonly readOnly = true;
  readonly capabilities: DeviceCapabilities = { discard: false, writeZeroes: false, extents: false, resize: false };
  readonly alignment = 1;
  readonly size: number;
  /** Bytes received by range requests outside the long download, and the number of resumes. */
  readonly stats = { sideBytes: 0, sideRequests: 0, resumes: 0, streamBytes: 0 };

  readonly #client: GlanceClient;
  readonly #id: string;
  readonly #opts: RemoteImageDeviceOptions;
  #checksum: string | null | undefined;
  #stream: ImageDataStream | undefined;
  /** Next file byte the long download delivers (everything before it was observed). */
  #pos = 0;
  /** Bytes received but not consumed yet. */
  #pending: Uint8Array | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(client: GlanceClient, imageId: string, size: number, options: RemoteImageDeviceOptions = {}) {
    this.#client = client;
    this.#id = imageId;
    this.size = size;
    this.#opts = options;
  }

  /** Byte position of the long download: everything before it has been observed. */
  get observedBytes(): number {
    return this.#pos;
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    if (!rangeInside(offset, buf.length, this.size)) {
      return Promise.reject(new OutOfRangeError(`Read of ${buf.length} bytes at ${offset} is outside the ${this.size}-byte image.`));
    }
    // Reads are served one at a time, in the order they were asked for (the pipeline asks in file order).
    const run = this.#queue.then(() => this.#read(buf, offset));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #read(buf: Uint8Array, offset: number): Promise<void> {
    if (this.#closed) throw new ReadOnlyDeviceError('The remote image is closed.');
    if (buf.length === 0) return;
    const skip = this.#opts.skipLimit ?? DEFAULT_SKIP;
    if (offset >= this.#pos && offset - this.#pos <= skip) {
      if (offset > this.#pos) await this.#consume(undefined, offset - this.#pos);
      await this.#consume(buf, buf.length);
      return;
    }
    await this.#sideRead(buf, offset);
  }

  /** Reads everything up to the end of the file through the long download (observers see it all). */
  finish(): Promise<void> {
    const run = this.#queue.then(async () => {
      if (this.#pos < this.size) await this.#consume(undefined, this.size - this.#pos);
      this.#dropStream();
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  #checkAbort(): void {
    if (this.#opts.signal?.aborted) throw new CancelledError();
  }

  #checkSameData(stream: ImageDataStream): void {
    if (stream.total !== this.size) {
      throw new IntegrityError(`Image ${this.#id} changed while it was read: its data is now ${stream.total} bytes, not ${this.size}.`);
    }
    if (this.#checksum === undefined) this.#checksum = stream.checksum;
    else if (stream.checksum !== this.#checksum) throw new IntegrityError(`Image ${this.#id} changed while it was read (checksum ${stream.checksum}, was ${this.#checksum}).`);
  }

  async #open(): Promise<ImageDataStream> {
    const stream = await this.#client.openData(this.#id, { start: this.#pos, signal: this.#opts.signal });
    this.#checkSameData(stream);
    return stream;
  }

  /** Takes `length` bytes from the long download into `buf` (or drops them when `buf` is undefined), observing them. */
  async #consume(buf: Uint8Array | undefined, length: number): Promise<void> {
    let done = 0;
    let failures = 0;
    const limit = this.#opts.resumeAttempts ?? 5;
    while (done < length) {
      this.#checkAbort();
      let piece = this.#pending;
      this.#pending = undefined;
      if (!piece) {
        try {
          this.#stream ??= await this.#open();
          const r = await this.#stream.reader.read();
          if (r.done) {
            this.#dropStream();
            if (this.#pos < this.size) throw Object.assign(new Error('connection closed before the end of the data'), { code: 'ECONNRESET' });
            throw new OutOfRangeError(`Image ${this.#id} ended at ${this.#pos} bytes.`);
          }
          piece = r.value;
          failures = 0;
        } catch (err) {
          this.#dropStream();
          this.#checkAbort();
          if (err instanceof BrickcryptError && !(err instanceof BackendUnavailableError)) throw err;
          if (!isTransientImageServiceError(err) && !isStreamBreak(err)) throw err;
          if (++failures > limit) {
            throw new BackendUnavailableError(`image service: download of image ${this.#id} broke ${failures} times at byte ${this.#pos}: ${(err as Error).message}`, { cause: err });
          }
          this.stats.resumes++;
          await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** (failures - 1))));
          continue;
        }
      }
      const take = Math.min(piece.length, length - done);
      const part = piece.subarray(0, take);
      if (buf) buf.set(part, done);
      const held = this.#opts.observe?.(part);
      if (held) await held;
      this.#pos += take;
      this.stats.streamBytes += take;
      done += take;
      if (take < piece.length) this.#pending = piece.subarray(take);
    }
  }

  async #sideRead(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    let failures = 0;
    while (done < buf.length) {
      this.#checkAbort();
      let stream: ImageDataStream | undefined;
      try {
        stream = await this.#client.openData(this.#id, { start: offset + done, end: offset + buf.length, signal: this.#opts.signal });
        this.#checkSameData(stream);
        this.stats.sideRequests++;
        for (;;) {
          const r = await stream.reader.read();
          if (r.done) break;
          const take = Math.min(r.value.length, buf.length - done);
          buf.set(r.value.subarray(0, take), done);
          done += take;
          this.stats.sideBytes += take;
        }
        if (done < buf.length) throw Object.assign(new Error('range answer ended early'), { code: 'ECONNRESET' });
      } catch (err) {
        stream?.cancel();
        this.#checkAbort();
        if (err instanceof BrickcryptError && !(err instanceof BackendUnavailableError)) throw err;
        if ((!isTransientImageServiceError(err) && !isStreamBreak(err)) || ++failures > (this.#opts.resumeAttempts ?? 5)) throw err;
        this.stats.resumes++;
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** (failures - 1))));
      }
    }
  }

  #dropStream(): void {
    this.#stream?.cancel();
    this.#stream = undefined;
    this.#pending = undefined;
  }

  async write(): Promise<void> {
    throw new ReadOnlyDeviceError('An image in the image service is read-only.');
  }
  async writeZeroes(): Promise<void> {
    throw new ReadOnlyDeviceError('An image in the image service is read-only.');
  }
  async discard(): Promise<void> {
    throw new ReadOnlyDeviceError('An image in the image service is read-only.');
  }
  async flush(): Promise<void> {}
  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, hole: false, zero: false }];
  }
  async close(): Promise<void> {
    this.#closed = true;
    await this.#queue;
    this.#dropStream();
  }
}

/** undici reports a body cut short as "terminated" (a TypeError) with a socket error as cause. */
function isStreamBreak(err: unknown): boolean {
  const e = err as { name?: string; message?: string; cause?: { code?: string } };
  return e?.name === 'TypeError' && (e.message === 'terminated' || e.cause?.code !== undefined);
}
