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
  /** Writes in order; `bytes` null for a zeroed range (kept as a length, not as a buffer of zeros). */
  readonly #writes: Array<{ offset: number; length: number; bytes: Uint8Array | null }> = [];

  constructor(readonly size: number) {}

  #check(offset: number, length: number): void {
    if (!rangeInside(offset, length, this.size)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte device`);
    }
  }

  /** Highest byte offset written so far (the header's extent). */
  get end(): number {
    return this.#writes.reduce((m, w) => Math.max(m, w.offset + w.length), 0);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    buf.fill(0);
    const end = offset + buf.length;
    for (const w of this.#writes) {
      const from = Math.max(offset, w.offset);
      const to = Math.min(end, w.offset + w.length);
      if (from >= to) continue;
      if (w.bytes) buf.set(w.bytes.subarray(from - w.offset, to - w.offset), from - offset);
      else buf.fill(0, from - offset, to - offset);
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    this.#writes.push({ offset, length: buf.length, bytes: new Uint8Array(buf) });
  }

  async flush(): Promise<void> {}

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length);
    this.#writes.push({ offset, length, bytes: null });
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length);
    return length === 0 ? [] : [{ offset, length, hole: false, zero: false }];
  }

  /**
   * Writes every captured write, in order, to `target`, then flushes it. With `zeroed` (the
   * caller knows the captured range of `target` already reads as zeros: a fresh sparse file,
   * or an area it zeroed itself) zeroed ranges are skipped instead of written.
   */
  async replay(target: BlockDevice, options: { zeroed?: boolean } = {}): Promise<void> {
    const written: Array<{ offset: number; length: number }> = [];
    for (const w of this.#writes) {
      if (w.bytes) {
        await target.write(w.bytes, w.offset);
        written.push(w);
        continue;
      }
      // A zeroed range over bytes written before it must still be written.
      const overlaps = written.some((d) => d.offset < w.offset + w.length && w.offset < d.offset + d.length);
      if (!options.zeroed || overlaps) await target.writeZeroes(w.offset, w.length);
    }
    await target.flush();
  }

  /** Forgets the captured bytes (they include key material encrypted under the passphrase). */
  async close(): Promise<void> {
    for (const w of this.#writes) w.bytes?.fill(0);
    this.#writes.length = 0;
  }
}
