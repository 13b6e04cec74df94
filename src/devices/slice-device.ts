/**
 * A window `[start, start+size)` of another device, seen as a device of its own.
 * Used for a LUKS payload segment, a detached header file, or a qcow2 data range.
 */
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';

export class SliceDevice implements BlockDevice {
  readonly capabilities: DeviceCapabilities;
  readonly alignment: number;
  readonly readOnly: boolean;

  constructor(
    readonly inner: BlockDevice,
    readonly start: number,
    readonly size: number,
    options: { readOnly?: boolean } = {},
  ) {
    if (!rangeInside(start, size, inner.size)) {
      throw new OutOfRangeError(`slice ${start}+${size} is outside the ${inner.size}-byte device`);
    }
    this.readOnly = inner.readOnly || options.readOnly === true;
    this.capabilities = { ...inner.capabilities, resize: false };
    this.alignment = inner.alignment;
  }

  #check(offset: number, length: number, writing: boolean): void {
    if (writing && this.readOnly) throw new ReadOnlyDeviceError();
    if (!rangeInside(offset, length, this.size)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte device`);
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, false);
    await this.inner.read(buf, this.start + offset);
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, true);
    await this.inner.write(buf, this.start + offset);
  }

  flush(): Promise<void> {
    return this.inner.flush();
  }

  async writeZeroes(offset: number, length: number, options?: { mayTrim?: boolean }): Promise<void> {
    this.#check(offset, length, true);
    await this.inner.writeZeroes(this.start + offset, length, options);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.#check(offset, length, true);
    await this.inner.discard(this.start + offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length, false);
    const inner = await this.inner.extents(this.start + offset, length);
    return inner.map((e) => ({ ...e, offset: e.offset - this.start }));
  }

  /** Closing a slice leaves the inner device open: the slice does not own it. */
  async close(): Promise<void> {}
}
