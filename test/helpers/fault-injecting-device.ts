/**
 * A `BlockDevice` for crash-safety tests: it keeps what a disk has made durable apart from
 * what was written since the last flush, counts every write and flush, and can "cut the
 * power" after any write. After the cut every operation fails, and `crashImage()` gives the
 * bytes a disk could hold afterwards: each write that was not flushed is dropped, torn (a
 * random prefix of its sectors survives) or complete, decided by a seeded generator so a
 * failing case can be replayed.
 *
 * @example
 * const dev = new FaultInjectingDevice(image, { cutAfterWrite: 17, seed: 3 });
 * await assert.rejects(operation(dev), PowerCutError);
 * const after = new MemoryDevice(dev.crashImage()); // resume on this
 */
import type { BlockDevice, DeviceCapabilities, Extent } from '../../src/block-device.js';
import { rangeInside } from '../../src/block-device.js';
import { OutOfRangeError } from '../../src/errors.js';

/** Thrown by every operation once the power is cut. */
export class PowerCutError extends Error {
  constructor() {
    super('power cut (fault injection)');
    this.name = 'PowerCutError';
  }
}

export interface FaultOptions {
  /** Cut the power right after this many writes (1-based); undefined: never. */
  cutAfterWrite?: number;
  /** Seed for how unflushed writes survive the cut. */
  seed?: number;
  /** Unit of a torn write. */
  sectorSize?: number;
}

interface PendingWrite {
  offset: number;
  data: Uint8Array;
}

/** xorshift32: small, seeded, good enough to pick survivors. */
function generator(seed: number): () => number {
  // Scramble the seed (murmur3 finaliser) so small seeds do not start with tiny outputs.
  let x = Math.imul(seed ^ (seed >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  x = (x ^ (x >>> 16)) >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

export class FaultInjectingDevice implements BlockDevice {
  readonly capabilities: DeviceCapabilities = { discard: true, writeZeroes: true, extents: false, resize: true };
  readonly alignment = 1;
  readonly readOnly = false;
  /** Writes (write, writeZeroes, discard) seen so far. */
  writes = 0;
  /** Flushes seen so far. */
  flushes = 0;
  #durable: Uint8Array;
  #current: Uint8Array;
  #pending: PendingWrite[] = [];
  #cut = false;
  readonly #options: FaultOptions;

  constructor(image: Uint8Array, options: FaultOptions = {}) {
    this.#durable = new Uint8Array(image);
    this.#current = new Uint8Array(image);
    this.#options = options;
  }

  get size(): number {
    return this.#current.length;
  }

  /** True once the power was cut. */
  get powerCut(): boolean {
    return this.#cut;
  }

  /** The bytes as they are now, flushed or not (what a clean run leaves). */
  get bytes(): Uint8Array {
    return this.#current;
  }

  #alive(): void {
    if (this.#cut) throw new PowerCutError();
  }

  #check(offset: number, length: number): void {
    this.#alive();
    if (!rangeInside(offset, length, this.#current.length)) throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.#current.length}-byte device`);
  }

  #record(offset: number, data: Uint8Array): void {
    this.#current.set(data, offset);
    this.#pending.push({ offset, data });
    this.writes++;
    if (this.#options.cutAfterWrite !== undefined && this.writes >= this.#options.cutAfterWrite) {
      this.#cut = true;
      throw new PowerCutError();
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    buf.set(this.#current.subarray(offset, offset + buf.length));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    this.#record(offset, new Uint8Array(buf));
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length);
    this.#record(offset, new Uint8Array(length));
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async flush(): Promise<void> {
    this.#alive();
    // A resize is durable at the next flush too: the durable image takes the current length.
    const next = new Uint8Array(this.#current.length);
    next.set(this.#durable.subarray(0, Math.min(next.length, this.#durable.length)));
    for (const w of this.#pending) if (w.offset < next.length) next.set(w.data.subarray(0, Math.max(0, next.length - w.offset)), w.offset);
    this.#durable = next;
    this.#pending = [];
    this.flushes++;
  }

  /** Grows or shrinks the device (a file's ftruncate); durable at the next flush. */
  async resize(size: number): Promise<void> {
    this.#alive();
    const next = new Uint8Array(size);
    next.set(this.#current.subarray(0, Math.min(size, this.#current.length)));
    this.#current = next;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length);
    return length === 0 ? [] : [{ offset, length, hole: false, zero: false }];
  }

  async close(): Promise<void> {}

  /**
   * What the disk holds after the cut: the durable bytes, then each unflushed write in order
   * with a random prefix of its sectors (none, some or all). The length is the durable one,
   * grown to the current length when the generator says the resize reached the disk.
   */
  crashImage(): Uint8Array {
    const rnd = generator(this.#options.seed ?? 1);
    const sector = this.#options.sectorSize ?? 512;
    const length = this.#current.length !== this.#durable.length && rnd() < 0.5 ? this.#current.length : this.#durable.length;
    const out = new Uint8Array(length);
    out.set(this.#durable.subarray(0, Math.min(length, this.#durable.length)));
    for (const w of this.#pending) {
      const sectors = Math.ceil(w.data.length / sector);
      const keep = Math.min(w.data.length, Math.floor(rnd() * (sectors + 1)) * sector);
      const end = Math.min(length, w.offset + keep);
      if (end > w.offset) out.set(w.data.subarray(0, end - w.offset), w.offset);
    }
    return out;
  }
}
