/**
 * A FIFO of received bytes for the protocol state machine: append socket chunks,
 * then take exactly-sized structures off the front without copying when a structure
 * lies inside one chunk.
 */
export class ByteQueue {
  #chunks: Uint8Array[] = [];
  #length = 0;

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
    let o = 0;
    while (o < n) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length, n - o);
      out.set(c.subarray(0, k), o);
      o += k;
      if (k === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(k);
    }
    this.#length -= n;
    return out;
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
