/**
 * The decrypted view of a LUKS volume: a `BlockDevice` of `payloadSize` plaintext bytes over
 * the volume's data device (ciphertext at `dataOffset`).
 *
 * Any byte offset and length may be read or written; the unaligned head and tail of a request
 * are handled in one place (`#pieces`), partial sectors are read-modify-written under a
 * sector-range lock so concurrent writers never lose each other's bytes.
 *
 * IV numbering (docs/architecture.md, cryptsetup's LUKS2 default without iv_large_sectors):
 * the IV of the sector at payload byte `p` is `p / 512 + ivTweak`, for every sector size.
 */
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { DeviceIoError, InvalidArgumentError, OutOfRangeError, ReadOnlyDeviceError, ReadOnlyVolumeError } from '../errors.js';
import type { VolumeKey } from '../secret.js';
import { parseEncryption } from '../crypto/cipher-spec.js';
import { createSectorCipher, type SectorCipher } from '../crypto/sector-cipher.js';
import { BufferPool } from './buffer-pool.js';

/** The parameters of an unlocked volume the view needs (a `LuksVolume` satisfies this). */
export interface EncryptionParams {
  /** dm-crypt style cipher string, e.g. "aes-xts-plain64". */
  readonly encryption: string;
  readonly keyBytes: number;
  /** Encryption sector size in bytes (512 for LUKS1). */
  readonly sectorSize: number;
  /** Added to every IV (LUKS2 segment iv_tweak; 0 for LUKS1). */
  readonly ivTweak: number;
  /** Byte offset of the payload in the data device. */
  readonly dataOffset: number;
  /** Plaintext bytes. */
  readonly payloadSize: number;
  /** Set when the volume must not be written (unknown mandatory requirement). */
  readonly readOnlyReason?: string;
  /** Throws when the payload must not be read or written at all (a `LuksVolume` with a recorded reencryption). */
  assertPayloadAccess?(): void;
}

export interface EncryptedDeviceOptions {
  readOnly?: boolean;
  /**
   * Pass discards through to the data device (dm-crypt's allow_discards): `discard()` and
   * `writeZeroes(..., { mayTrim: true })` deallocate ciphertext, after which those plaintext
   * sectors read as unspecified bytes, and `extents()` reveals the data device's holes.
   * Off by default because it leaks which blocks are in use.
   */
  allowDiscards?: boolean;
  /**
   * Runs the encryption and decryption of large requests elsewhere (worker threads), so several
   * cores share the cipher work; requests below `offloadMinBytes` stay on the calling thread.
   * The device owns it: `close()` calls its `close()` (which must wipe its keys).
   */
  cryptoOffload?: SectorCryptoOffload;
  /** Smallest piece (bytes) sent to `cryptoOffload`; default 64 KiB (smaller ones cost more to hand over). */
  offloadMinBytes?: number;
}

/**
 * An asynchronous sector transform with the device's key and sector size, e.g. a worker pool,
 * working in place on memory both sides share: `data` holds whole sectors and lies in a
 * SharedArrayBuffer, and must not be touched until the promise settles. `iv` is the first
 * sector's IV in 512-byte units, as in `SectorCipher`.
 *
 * @example
 * const dev = EncryptedDevice.open(file, volume, key, { cryptoOffload: pool.sectorCrypto(params, key.expose()) });
 */
export interface SectorCryptoOffload {
  /** Absent: writes encrypt on the calling thread. */
  encryptInPlace?(data: Uint8Array, iv: number): Promise<void>;
  decryptInPlace(data: Uint8Array, iv: number): Promise<void>;
  /**
   * Optional: encrypts `data` in place, then writes it with `pwrite(fd, position)` on the same
   * thread; rejects with an errno-coded error when the write fails. Used with a data device's
   * `directIo`, it spares the calling thread a second round trip per write.
   */
  encryptAndWrite?(data: Uint8Array, iv: number, fd: number, position: number): Promise<void>;
  /** Optional: the reverse, `pread(fd, position)` into `data` (zeros past the end of the file), then decrypt in place. */
  readAndDecrypt?(data: Uint8Array, iv: number, fd: number, position: number): Promise<void>;
  /** Wipes the key material it holds. */
  close(): Promise<void>;
}

const DEFAULT_OFFLOAD_MIN = 64 * 1024;

/** Largest plaintext piece handled at once; bounds the scratch memory of one request. */
const PIECE_BYTES = 1 << 20;

/** Sector-aligned byte-range lock: writes that overlap wait for each other. */
class RangeLock {
  readonly #held: Array<{ start: number; end: number; done: Promise<void> }> = [];

  async acquire(start: number, end: number): Promise<() => void> {
    for (;;) {
      const busy = this.#held.find((h) => h.start < end && start < h.end);
      if (!busy) break;
      await busy.done;
    }
    let release!: () => void;
    const entry = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.#held.push(entry);
    return () => {
      this.#held.splice(this.#held.indexOf(entry), 1);
      release();
    };
  }
}

/**
 * Plaintext view of a LUKS volume's data.
 *
 * @example
 * const volume = await LuksVolume.open(file);
 * const { key } = await volume.unlock(passphrase);
 * const plain = EncryptedDevice.open(file, volume, key);   // takes ownership of key
 * const buf = new Uint8Array(100);
 * await plain.read(buf, 12345);                             // any offset, any length
 * await plain.close();                                      // wipes the key
 */
export class EncryptedDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly alignment: number;
  readonly capabilities: DeviceCapabilities;
  readonly sectorSize: number;
  readonly ivTweak: number;
  readonly dataOffset: number;
  readonly allowDiscards: boolean;
  readonly #cipher: SectorCipher;
  readonly #key: VolumeKey | undefined;
  readonly #lock = new RangeLock();
  readonly #offload: SectorCryptoOffload | undefined;
  readonly #offloadMin: number;
  /** Scratch (one piece each) in shared memory, reused: fresh pages per request cost more than the cipher. */
  readonly #scratch = new BufferPool({ maxPooledBytes: 8 * PIECE_BYTES, maxPooledSize: PIECE_BYTES });
  #closed = false;

  /**
   * Builds the view from a ready cipher. `open()` is the usual entry; this form lets a caller
   * supply any `SectorCipher`. `key`, when given, is wiped by `close()` together with the cipher.
   */
  constructor(
    readonly data: BlockDevice,
    geometry: { sectorSize: number; ivTweak: number; dataOffset: number; payloadSize: number },
    cipher: SectorCipher,
    options: EncryptedDeviceOptions & { key?: VolumeKey } = {},
  ) {
    const { sectorSize, ivTweak, dataOffset, payloadSize } = geometry;
    if (!Number.isInteger(Math.log2(sectorSize)) || sectorSize < 512 || sectorSize > 4096) {
      throw new InvalidArgumentError(`Sector size ${sectorSize} is not a power of two in 512..4096.`);
    }
    if (cipher.sectorSize !== sectorSize) throw new InvalidArgumentError('The cipher and the volume disagree on the sector size.');
    if (!Number.isSafeInteger(ivTweak) || ivTweak < 0) throw new InvalidArgumentError(`Invalid IV tweak ${ivTweak}.`);
    // A data device that ends inside a sector exposes only whole sectors, as dm-crypt does.
    const size = Math.floor(payloadSize / sectorSize) * sectorSize;
    if (!rangeInside(dataOffset, size, data.size)) {
      throw new OutOfRangeError(`Payload ${dataOffset}+${size} does not fit the ${data.size}-byte data device.`);
    }
    this.size = size;
    this.sectorSize = sectorSize;
    this.ivTweak = ivTweak;
    this.dataOffset = dataOffset;
    this.#cipher = cipher;
    this.#key = options.key;
    this.#offload = options.cryptoOffload;
    this.#offloadMin = Math.max(sectorSize, options.offloadMinBytes ?? DEFAULT_OFFLOAD_MIN);
    this.readOnly = data.readOnly || options.readOnly === true;
    this.allowDiscards = options.allowDiscards === true;
    this.alignment = sectorSize;
    this.capabilities = {
      discard: this.allowDiscards && data.capabilities.discard,
      writeZeroes: false,
      extents: this.allowDiscards && data.capabilities.extents,
      resize: false,
    };
  }

  /**
   * The view of an unlocked volume. Takes ownership of `key` (wiped on close).
   * @throws ReadOnlyVolumeError when opened for writing a volume fenced by `readOnlyReason`.
   */
  static open(data: BlockDevice, volume: EncryptionParams, key: VolumeKey, options: EncryptedDeviceOptions = {}): EncryptedDevice {
    volume.assertPayloadAccess?.();
    const readOnly = options.readOnly === true || data.readOnly;
    if (!readOnly && volume.readOnlyReason) {
      throw new ReadOnlyVolumeError(`The volume can only be opened read-only: ${volume.readOnlyReason}`);
    }
    const spec = parseEncryption(volume.encryption, volume.keyBytes);
    const cipher = createSectorCipher(spec, key.expose(), volume.sectorSize);
    return new EncryptedDevice(
      data,
      { sectorSize: volume.sectorSize, ivTweak: volume.ivTweak, dataOffset: volume.dataOffset, payloadSize: volume.payloadSize },
      cipher,
      { ...options, readOnly, key },
    );
  }

  /** IV number (512-byte units) of the sector starting at plaintext byte `pos`. */
  ivAt(pos: number): number {
    return pos / 512 + this.ivTweak;
  }

  #check(offset: number, length: number, writing: boolean): void {
    if (this.#closed) throw new DeviceIoError('encrypted device is closed');
    if (writing && this.readOnly) throw new ReadOnlyDeviceError('The encrypted device is open read-only.');
    if (!rangeInside(offset, length, this.size)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte encrypted device`);
    }
  }

  /**
   * Splits `[offset, offset+length)` into sector-aligned pieces of at most PIECE_BYTES:
   * `start`/`end` are the aligned bounds, `from`/`to` the requested bytes inside them.
   */
  *#pieces(offset: number, length: number): Generator<{ start: number; end: number; from: number; to: number }> {
    const ss = this.sectorSize;
    const stop = offset + length;
    let pos = offset;
    while (pos < stop) {
      const start = pos - (pos % ss);
      const end = Math.min(Math.ceil(stop / ss) * ss, start + PIECE_BYTES);
      const to = Math.min(stop, end);
      yield { start, end, from: pos, to };
      pos = to;
    }
  }

  async #readSectors(buf: Uint8Array, start: number): Promise<void> {
    await this.data.read(buf, this.dataOffset + start);
    this.#cipher.decrypt(buf, this.ivAt(start));
  }

  #offloads(bytes: number): boolean {
    return this.#offload !== undefined && bytes >= this.#offloadMin;
  }

  /** True when `buf` at `offset` can be handed to the offload as it is: whole sectors in shared memory. */
  #sharedRun(buf: Uint8Array, offset: number): boolean {
    const ss = this.sectorSize;
    return offset % ss === 0 && buf.length % ss === 0 && this.#offloads(buf.length) && buf.buffer instanceof SharedArrayBuffer;
  }

  /** Runs `fn` over `buf` (plaintext byte `offset` onwards) in PIECE_BYTES pieces, in parallel: piece, its IV, its plaintext offset. */
  async #offloadRun(buf: Uint8Array, offset: number, fn: (data: Uint8Array, iv: number, at: number) => Promise<void>): Promise<void> {
    const jobs: Array<Promise<void>> = [];
    for (let pos = 0; pos < buf.length; pos += PIECE_BYTES) {
      jobs.push(fn(buf.subarray(pos, Math.min(buf.length, pos + PIECE_BYTES)), this.ivAt(offset + pos), offset + pos));
    }
    await Promise.all(jobs);
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, false);
    const offload = this.#offload;
    if (offload && this.#sharedRun(buf, offset)) {
      // The caller's memory is shared with the workers: one read of the ciphertext, decrypted in place.
      const directIo = this.data.directIo?.bind(this.data);
      const readAndDecrypt = offload.readAndDecrypt?.bind(offload);
      if (directIo && readAndDecrypt) {
        // Each piece is read and decrypted by one worker, without a round trip through this thread.
        await this.#offloadRun(buf, offset, (piece, iv, at) =>
          directIo('read', this.dataOffset + at, piece.length, (fd, position) => readAndDecrypt(piece, iv, fd, position)),
        );
        return;
      }
      await this.data.read(buf, this.dataOffset + offset);
      await this.#offloadRun(buf, offset, (d, iv) => offload.decryptInPlace(d, iv));
      return;
    }
    for (const { start, end, from, to } of this.#pieces(offset, buf.length)) {
      const dst = buf.subarray(from - offset, to - offset);
      if (from === start && to === end && !this.#offloads(end - start)) {
        await this.#readSectors(dst, start); // decrypt in the caller's buffer
        continue;
      }
      // Partial sectors, or a piece for the offload: decrypt in pooled (shared) scratch.
      const tmp = this.#scratch.take(end - start);
      try {
        await this.data.read(tmp, this.dataOffset + start);
        if (offload && this.#offloads(tmp.length)) await offload.decryptInPlace(tmp, this.ivAt(start));
        else this.#cipher.decrypt(tmp, this.ivAt(start));
        dst.set(tmp.subarray(from - start, to - start));
      } finally {
        tmp.fill(0);
        this.#scratch.give(tmp);
      }
    }
  }

  /** Encrypts and writes plaintext pieces; `fill(tmp, from, to)` puts the new bytes into place. */
  async #writeRange(offset: number, length: number, fill: (tmp: Uint8Array, from: number, to: number, start: number) => void): Promise<void> {
    const ss = this.sectorSize;
    const release = await this.#lock.acquire(offset - (offset % ss), Math.ceil((offset + length) / ss) * ss);
    try {
      for (const { start, end, from, to } of this.#pieces(offset, length)) {
        // Shared memory, so a worker can encrypt it in place.
        const tmp = this.#scratch.take(end - start);
        let encrypted = false;
        try {
          // Read-modify-write of the partial first and last sectors.
          if (from > start) await this.#readSectors(tmp.subarray(0, ss), start);
          if (to < end && (end - ss > start || from === start)) await this.#readSectors(tmp.subarray(end - start - ss), end - ss);
          fill(tmp, from, to, start);
          if (this.#offloads(tmp.length) && this.#offload?.encryptInPlace) await this.#offload.encryptInPlace(tmp, this.ivAt(start));
          else this.#cipher.encrypt(tmp, this.ivAt(start));
          encrypted = true;
          await this.data.write(tmp, this.dataOffset + start);
        } finally {
          // Only ciphertext goes back to the pool; anything else is wiped first.
          if (!encrypted) tmp.fill(0);
          this.#scratch.give(tmp);
        }
      }
    } finally {
      release();
    }
  }

  /**
   * As `write`, encrypting `buf` itself when it is whole sectors in shared memory and large
   * enough for the offload (no scratch, no copy); `buf` then holds ciphertext. Otherwise `write`.
   */
  async writeConsuming(buf: Uint8Array, offset: number): Promise<void> {
    const encrypt = this.#offload?.encryptInPlace?.bind(this.#offload);
    if (!encrypt || !this.#sharedRun(buf, offset)) return this.write(buf, offset);
    this.#check(offset, buf.length, true);
    const release = await this.#lock.acquire(offset, offset + buf.length);
    try {
      const directIo = this.data.directIo?.bind(this.data);
      const encryptAndWrite = this.#offload?.encryptAndWrite?.bind(this.#offload);
      if (directIo && encryptAndWrite) {
        // Each piece is encrypted and written by the worker that has it in its cache.
        await this.#offloadRun(buf, offset, (piece, iv, at) =>
          directIo('write', this.dataOffset + at, piece.length, (fd, position) => encryptAndWrite(piece, iv, fd, position)),
        );
        return;
      }
      await this.#offloadRun(buf, offset, encrypt);
      await this.data.write(buf, this.dataOffset + offset);
    } finally {
      release();
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length, true);
    await this.#writeRange(offset, buf.length, (tmp, from, to, start) => tmp.set(buf.subarray(from - offset, to - offset), from - start));
  }

  async flush(): Promise<void> {
    if (this.#closed) throw new DeviceIoError('encrypted device is closed');
    await this.data.flush();
  }

  /**
   * Zeros a range by writing encrypted zeros. With `mayTrim` and `allowDiscards`, whole sectors
   * are discarded in the data device instead (their plaintext is then unspecified, as with dm-crypt).
   */
  async writeZeroes(offset: number, length: number, options: { mayTrim?: boolean } = {}): Promise<void> {
    this.#check(offset, length, true);
    if (options.mayTrim && this.allowDiscards) {
      await this.discard(offset, length);
      return;
    }
    await this.#writeRange(offset, length, (tmp, from, to, start) => tmp.fill(0, from - start, to - start));
  }

  /** Without `allowDiscards` a discard writes encrypted zeros (nothing about the layout leaks). */
  async discard(offset: number, length: number): Promise<void> {
    this.#check(offset, length, true);
    if (!this.allowDiscards) {
      await this.#writeRange(offset, length, (tmp, from, to, start) => tmp.fill(0, from - start, to - start));
      return;
    }
    // Only whole sectors can go; a partial sector keeps its data (a discard is a hint).
    const ss = this.sectorSize;
    const start = Math.ceil(offset / ss) * ss;
    const end = Math.floor((offset + length) / ss) * ss;
    if (end > start) await this.data.discard(this.dataOffset + start, end - start);
  }

  /** All data, unless `allowDiscards`: then holes of the data device show through (not as zeros). */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length, false);
    if (length === 0) return [];
    if (!this.allowDiscards || !this.data.capabilities.extents) return [{ offset, length, hole: false, zero: false }];
    const inner = await this.data.extents(this.dataOffset + offset, length);
    const out: Extent[] = [];
    for (const e of inner) {
      const ext = { offset: e.offset - this.dataOffset, length: e.length, hole: e.hole, zero: false };
      const last = out[out.length - 1];
      if (last && last.hole === ext.hole) last.length += ext.length;
      else out.push(ext);
    }
    return out;
  }

  /**
   * Wipes the cipher's key schedule, the offload's keys and the volume key. The data device
   * stays open (not owned).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#scratch.wipe();
    this.#cipher.wipe();
    this.#key?.wipe();
    await this.#offload?.close();
  }
}
