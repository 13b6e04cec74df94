/** An in-memory `BlockDevice`, for tests, demos and small headers. */
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';

export class MemoryDevice implements BlockDevice {
  readonly capabilities: DeviceCapabilities = { discard: true, writeZeroes: true, extents: false, resize: true };
  readonly alignment = 1;
  #data: Uint8Array;
  #closed = false;

  constructor(
    sizeOrData: number | Uint8Array,
    readonly readOnly = false,
  ) {
    this.#data = typeof sizeOrData === 'number' ? new Uint8Array(sizeOrData) : sizeOrData;
  }

  get size(): number {
    return this.#data.length;
  }

  /** The backing bytes (not a copy). */
  get bytes(): Uint8Array {
    return this.#data;
  }

  resize(size: number): void {
    const next = new Uint8Array(size);
    next.set(this.#data.subarray(0, Math.min(size, this.#data.length)));
    this.#data = next;
  }

  #check(offset: number, length: number, writing: boolean): void {
    if (this.#closed) throw new Error('device is closed');
    if (writing && this.readOnly) throw new ReadOnlyDeviceError();
    if (!rangeInside(offset, length, this.#data.length)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.#data.length}-byte device`);
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, false);
    buf.set(this.#data.subarray(offset, offset + buf.length));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, true);
    this.#data.set(buf, offset);
  }

  async flush(): Promise<void> {}

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length, true);
    this.#data.fill(0, offset, offset + length);
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length, false);
    return length === 0 ? [] : [{ offset, length, hole: false, zero: false }];
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
