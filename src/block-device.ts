/**
 * The bottom of the data path: a random-access, byte-addressed block device.
 *
 * Format code (LUKS, qcow2, NBD) only ever sees this interface; one adapter per
 * backing store (file, memory, block device, qcow2 image, decrypted view) implements it.
 * Offsets and sizes are byte counts held in JS numbers (exact up to 2^53 = 8 PiB).
 */

export interface DeviceCapabilities {
  /** `discard()` can punch holes (data reads back as zeros afterwards). */
  readonly discard: boolean;
  /** `writeZeroes()` is cheaper than writing a buffer of zeros. */
  readonly writeZeroes: boolean;
  /** `extents()` reports real allocation (holes), not just "all data". */
  readonly extents: boolean;
  /** The device can change size (`resize()`). */
  readonly resize: boolean;
}

/** One run of bytes with the same allocation state, as NBD base:allocation reports them. */
export interface Extent {
  offset: number;
  length: number;
  /** No storage is allocated (a hole); reads return zeros when `zero` is also set. */
  hole: boolean;
  /** Reads are known to return zeros. */
  zero: boolean;
}

export interface BlockDevice {
  /** Size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: DeviceCapabilities;
  /**
   * Preferred I/O alignment in bytes (1 if any byte offset is fine; 512 or 4096 for
   * sector-addressed views). Callers may use any offset; aligned I/O is faster.
   */
  readonly alignment: number;

  /** Fills all of `buf` from `offset`. Reading past the end is an `OutOfRangeError`. */
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** Writes all of `buf` at `offset`. Writing past the end is an `OutOfRangeError`. */
  write(buf: Uint8Array, offset: number): Promise<void>;
  /**
   * Optional: as `write`, but the device may use `buf` as scratch (its content afterwards is
   * unspecified), which saves a copy when the caller no longer needs the bytes, e.g. the
   * encrypted view encrypting in place. Callers without it use `write`.
   */
  writeConsuming?(buf: Uint8Array, offset: number): Promise<void>;
  /**
   * Optional: lets `io` read or write `length` bytes at `offset` itself, with pread/pwrite on
   * the device's file descriptor at `position`, from any thread (a crypto worker reads and
   * decrypts, or encrypts and writes, in one step, without a round trip through the caller's
   * thread). The device checks the range, keeps its own bookkeeping, maps errors (`io` rejects
   * with an errno-coded error) and does not close while `io` runs. A reader treats the end of
   * a file that is shorter than `size` as zeros, as `read` does.
   */
  directIo?(access: 'read' | 'write', offset: number, length: number, io: (fd: number, position: number) => Promise<void>): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Makes `[offset, offset+length)` read as zeros; may deallocate if `mayTrim`. */
  writeZeroes(offset: number, length: number, options?: { mayTrim?: boolean }): Promise<void>;
  /** Hint that a range is unused; afterwards its content is unspecified (zeros for files). */
  discard(offset: number, length: number): Promise<void>;
  /** Allocation map of a range, merged into maximal runs. Devices without holes report one data extent. */
  extents(offset: number, length: number): Promise<Extent[]>;
  /** Releases OS resources. Further calls fail. */
  close(): Promise<void>;
}

/** Checks that `[offset, offset+length)` lies inside a device of `size` bytes. */
export function rangeInside(offset: number, length: number, size: number): boolean {
  return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0 && offset + length <= size;
}
