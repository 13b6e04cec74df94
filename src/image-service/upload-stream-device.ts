/**
 * The write end of an upload as a `BlockDevice`: the data pipeline writes the image in file
 * order into it, and `body()` hands the same bytes, in the same order, to the HTTP request.
 * Nothing is stored: writes wait while `maxQueued` chunks are not yet taken by the request
 * (back-pressure), so memory stays bounded for any image size.
 *
 * Writes must be strictly sequential (the pipeline issues them in ascending order, one at a
 * time); a gap or an overlap is an `OutOfRangeError`. Each written buffer is copied: the
 * pipeline reuses its buffers, and the socket may still hold a chunk after taking the next.
 */
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { CancelledError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';

export interface UploadStreamOptions {
  /** Called with every byte in file order (the chunk is only valid during the call). */
  observe?: (chunk: Uint8Array) => void;
  /**
   * Called with each queued copy (in shared memory, never changed afterwards) in file order;
   * a returned promise holds the next write back (e.g. a hash on another thread catching up).
   */
  observeCopy?: (copy: Uint8Array) => Promise<void> | void;
  /** Chunks queued before a write waits (default 2). */
  maxQueued?: number;
}

export class UploadStreamDevice implements BlockDevice {
  readonly readOnly = false;
  readonly capabilities: DeviceCapabilities = { discard: false, writeZeroes: false, extents: false, resize: false };
  readonly alignment = 1;
  readonly size: number;

  readonly #opts: UploadStreamOptions;
  readonly #queue: Uint8Array[] = [];
  #written = 0;
  #ended = false;
  #failed: Error | undefined;
  /** Wakes the reader (data or end) and the writer (room). */
  #wakeReader: (() => void) | undefined;
  #wakeWriter: (() => void) | undefined;

  constructor(size: number, options: UploadStreamOptions = {}) {
    this.size = size;
    this.#opts = options;
  }

  /** Bytes written so far. */
  get written(): number {
    return this.#written;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (this.#failed) throw this.#failed;
    if (this.#ended) throw new ReadOnlyDeviceError('The upload stream has ended.');
    if (offset !== this.#written || offset + buf.length > this.size) {
      throw new OutOfRangeError(`An upload stream takes writes in order: got ${buf.length} bytes at ${offset}, expected offset ${this.#written} of ${this.size}.`);
    }
    while (this.#queue.length >= (this.#opts.maxQueued ?? 2)) {
      await new Promise<void>((r) => (this.#wakeWriter = r));
      if (this.#failed) throw this.#failed;
    }
    this.#opts.observe?.(buf);
    // The copy lives in shared memory, so a worker thread can read it while it waits to be sent.
    const copy = new Uint8Array(new SharedArrayBuffer(buf.length));
    copy.set(buf);
    this.#queue.push(copy);
    this.#written += buf.length;
    this.#wake();
    await this.#opts.observeCopy?.(copy);
  }

  #wake(): void {
    const r = this.#wakeReader;
    this.#wakeReader = undefined;
    r?.();
  }

  /** No more data: the request body ends once the queue is drained. Refused before `size` bytes. */
  end(): void {
    if (this.#written !== this.size) throw new OutOfRangeError(`Upload stream ended after ${this.#written} of ${this.size} bytes.`);
    this.#ended = true;
    this.#wake();
  }

  /** Stops the stream: pending and later writes reject, the request body fails. */
  fail(err: Error = new CancelledError()): void {
    this.#failed ??= err;
    this.#wake();
    const w = this.#wakeWriter;
    this.#wakeWriter = undefined;
    w?.();
  }

  /** The request body: every written chunk, in order. */
  async *body(): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (this.#failed) throw this.#failed;
      const chunk = this.#queue.shift();
      if (chunk) {
        const w = this.#wakeWriter;
        this.#wakeWriter = undefined;
        w?.();
        yield chunk;
        continue;
      }
      if (this.#ended) return;
      await new Promise<void>((r) => (this.#wakeReader = r));
    }
  }

  async read(): Promise<void> {
    throw new ReadOnlyDeviceError('An upload stream cannot be read back.');
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    // Not expected from the pipeline (zeros are written as data), but correct if asked.
    const zeros = new Uint8Array(Math.min(length, 1 << 20));
    for (let done = 0; done < length; done += zeros.length) await this.write(zeros.subarray(0, Math.min(zeros.length, length - done)), offset + done);
  }
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, hole: false, zero: false }];
  }
  async close(): Promise<void> {
    if (!this.#ended) this.fail();
  }
}
