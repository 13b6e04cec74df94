/**
 * A stand-in target for formatting a LUKS header whose bytes must reach the real device
 * LAST: writes are kept in memory (reads see them over zeros) and replayed by `replay()`
 * after the payload is complete, so an interrupted conversion leaves no valid header.
 */
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { OutOfRangeError } from '../errors.js';

export class HeaderCapture implements BlockDevice {
  readonly readOnly = false;
  readonly alignment = 1;
  readonly capabilities: DeviceCapabilities = { discard: false, writeZeroes: false, extents: false, resize: false };
  readonly #writes: Array<{ offset: number; bytes: Uint8Array }> = [];

  constructor(readonly size: number) {}

  #check(offset: number, length: number): void {
    if (!rangeInside(offset, length, this.size)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte device`);
    }
  }

  /** Highest byte offset written so far (the header's extent). */
  get end(): number {
    return this.#writes.reduce((m, w) => Math.max(m, w.offset + w.bytes.length), 0);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    buf.fill(0);
    const end = offset + buf.length;
    for (const w of this.#writes) {
      const from = Math.max(offset, w.offset);
      const to = Math.min(end, w.offset + w.bytes.length);
      if (from < to) buf.set(w.bytes.subarray(from - w.offset, to - w.offset), from - offset);
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    this.#writes.push({ offset, bytes: new Uint8Array(buf) });
  }

  async flush(): Promise<void> {}

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length);
    this.#writes.push({ offset, bytes: new Uint8Array(length) });
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length);
    return length === 0 ? [] : [{ offset, length, hole: false, zero: false }];
  }

  /** Writes every captured write, in order, to `target`, then flushes it. */
  async replay(target: BlockDevice): Promise<void> {
    for (const w of this.#writes) await target.write(w.bytes, w.offset);
    await target.flush();
  }

  /** Forgets the captured bytes (they include key material encrypted under the passphrase). */
  async close(): Promise<void> {
    for (const w of this.#writes) w.bytes.fill(0);
    this.#writes.length = 0;
  }
}
