/** Copies `src` into `dst` at `dstOffset` (the same contract as `dst.set(src, dstOffset)`). */
export type CopyBytes = (dst: Uint8Array, dstOffset: number, src: Uint8Array) => void;

/**
 * A FIFO of received bytes for the protocol state machine: append socket chunks,
 * then take exactly-sized structures off the front without copying when a structure
 * lies inside one chunk.
 */
export class ByteQueue {
  #chunks: Uint8Array[] = [];
  #length = 0;
  readonly #copy: CopyBytes;

  /** `copy` moves received bytes into taken buffers (default: `TypedArray.prototype.set`). */
  constructor(copy: CopyBytes = (dst, dstOffset, src) => dst.set(src, dstOffset)) {
    this.#copy = copy;
  }

  get length(): number {
    return this.#length;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /**
   * Removes and returns the first `n` bytes: a view when they lie in one chunk, else a copy.
   * With `allocate`, always a copy, into the buffer it returns (exactly `n` bytes).
   */
  take(n: number, allocate?: (n: number) => Uint8Array): Uint8Array {
    if (n > this.#length) throw new RangeError(`ByteQueue.take(${n}) with ${this.#length} bytes queued`);
    if (n === 0) return new Uint8Array(0);
    const first = this.#chunks[0]!;
    if (first.length >= n && !allocate) {
      const out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
      this.#length -= n;
      return out;
    }
    const out = allocate ? allocate(n) : new Uint8Array(n);
    if (out.length !== n) throw new RangeError(`ByteQueue.take: the allocator returned ${out.length} bytes, not ${n}`);
    this.takeInto(out, 0, n);
    return out;
  }

  /**
   * Moves up to `max` bytes from the front into `out` at `offset` (with the queue's copy
   * function); returns how many were moved. For filling a buffer as its bytes arrive.
   */
  takeInto(out: Uint8Array, offset: number, max: number): number {
    const n = Math.min(max, this.#length);
    let o = offset;
    while (o < offset + n) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length, offset + n - o);
      this.#copy(out, o, c.subarray(0, k));
      o += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.#length -= n;
    return n;
  }

  /**
   * Replaces the queued bytes by one copy the queue owns, so the chunks that were pushed can be
   * reused by their owner (a socket's receive buffer).
   */
  own(): void {
    if (this.#chunks.length === 0) return;
    const n = this.#length;
    const copy = new Uint8Array(n);
    this.takeInto(copy, 0, n);
    this.push(copy);
  }

  /** Drops up to `n` bytes from the front; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.#length);
    const dropped = left;
    while (left > 0) {
      const c = this.#chunks[0]!;
      if (c.length <= left) {
        this.#chunks.shift();
        left -= c.length;
      } else {
        this.#chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.#length -= dropped;
    return dropped;
  }

  clear(): void {
    this.#chunks = [];
    this.#length = 0;
  }
}
