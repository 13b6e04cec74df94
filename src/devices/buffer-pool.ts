/**
 * Reusable I/O buffers: the NBD server's READ replies and WRITE payloads, the encrypted view's scratch.
 *
 * A fresh buffer per request costs more than the request: its pages are new to the process, so
 * the kernel faults and zeroes them while the file read fills them, and the garbage collector
 * later reclaims them (measured: a 1 GiB read in 256 KiB requests took 3-4x as long with fresh
 * buffers as with reused ones). Buffers are returned once their work is done (a reply sent).
 *
 * The memory is a SharedArrayBuffer, so a device with a worker-thread cipher
 * (`SectorCryptoOffload`) decrypts or encrypts in the very buffer the socket sends or filled.
 * Returned buffers are zeroed when the pool is wiped (on close), not on every reuse: a taken
 * buffer is always filled completely before it is used.
 *
 * @example
 * const pool = new BufferPool({ maxPooledBytes: 64 << 20 });
 * const buf = pool.take(256 * 1024);
 * await device.read(buf, offset);
 * socket.write(buf, () => pool.give(buf));
 */
export interface BufferPoolOptions {
  /** Upper bound of idle memory kept for reuse (default 64 MiB). */
  maxPooledBytes?: number;
  /** Buffers above this size are never pooled (default 4 MiB). */
  maxPooledSize?: number;
}

export class BufferPool {
  readonly #free = new Map<number, Uint8Array[]>();
  readonly #maxPooledBytes: number;
  readonly #maxPooledSize: number;
  #pooledBytes = 0;

  constructor(options: BufferPoolOptions = {}) {
    this.#maxPooledBytes = options.maxPooledBytes ?? 64 << 20;
    this.#maxPooledSize = options.maxPooledSize ?? 4 << 20;
  }

  /** Idle bytes held for reuse. */
  get pooledBytes(): number {
    return this.#pooledBytes;
  }

  /** A buffer of exactly `length` bytes with unspecified content, backed by its own SharedArrayBuffer. */
  take(length: number): Uint8Array {
    const list = this.#free.get(length);
    const reused = list?.pop();
    if (reused) {
      this.#pooledBytes -= length;
      return reused;
    }
    return new Uint8Array(new SharedArrayBuffer(length));
  }

  /** Hands a buffer from `take` back; it must no longer be in use (sent, or never sent). */
  give(buf: Uint8Array): void {
    const n = buf.length;
    if (n === 0 || n > this.#maxPooledSize || this.#pooledBytes + n > this.#maxPooledBytes) return;
    let list = this.#free.get(n);
    if (!list) this.#free.set(n, (list = []));
    list.push(buf);
    this.#pooledBytes += n;
  }

  /** Zeroes and drops every idle buffer (plaintext of earlier reads). */
  wipe(): void {
    for (const list of this.#free.values()) for (const b of list) b.fill(0);
    this.#free.clear();
    this.#pooledBytes = 0;
  }
}
