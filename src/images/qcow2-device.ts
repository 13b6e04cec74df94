/**
 * A read-only `BlockDevice` view of a qcow2 image (versions 2 and 3): the guest disk
 * as QEMU would present it. Follows QEMU docs/interop/qcow2.txt; refcounts and
 * snapshots are not needed to read the active disk and are ignored.
 *
 * Reads map each guest range through the L1/L2 tables (L2 tables cached in a bounded
 * LRU) and read physically contiguous host clusters with one call. `extents()` reports
 * unallocated clusters as holes and zero clusters as zeros so conversions stay sparse.
 * LUKS-encrypted images (`encrypt.format=luks`) are read when the passphrase is given.
 */
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import {
  BackingFileRequiredError,
  CorruptHeaderError,
  InvalidArgumentError,
  OutOfRangeError,
  ReadOnlyDeviceError,
  UnsupportedError,
} from '../errors.js';
import {
  INCOMPAT,
  type Qcow2Header,
  type Qcow2HeaderExtras,
  decodeQcow2Extras,
  decodeQcow2Header,
  validateQcow2Header,
} from '../formats/qcow2/header.js';
import { decodeL1Entry, decodeL2Entry, subclusterState, SUBCLUSTERS_PER_CLUSTER } from '../formats/qcow2/l2-entry.js';
import { decompressCluster } from '../formats/qcow2/compression.js';
import { SliceDevice } from '../devices/slice-device.js';
import type { Passphrase, VolumeKey } from '../secret.js';
import type { SectorCipher } from '../crypto/sector-cipher.js';

export interface Qcow2OpenOptions {
  /**
   * The backing image, opened by the caller. Required when the image names a backing
   * file (it is never opened implicitly from the name stored in the image).
   */
  backing?: BlockDevice;
  /** Memory bound of the L2 table cache (default 32 MiB, at least 4 tables). */
  l2CacheBytes?: number;
  /** Close `file` (and `backing`) when this device is closed. Default false. */
  ownsFile?: boolean;
  /**
   * Passphrase of a LUKS-encrypted qcow2 (`encrypt.format=luks`); without it such
   * images are refused. The caller keeps (and wipes) the passphrase.
   */
  passphrase?: Passphrase;
}

/** Data encryption of a LUKS-encrypted qcow2: sectors use the host offset / 512 as IV (qcow2.txt "Data encryption"). */
interface Qcow2Crypto {
  cipher: SectorCipher;
  key: VolumeKey;
}

const LUKS_IV_SECTOR = 512;

/** Opens the LUKS header stored inside a qcow2 image and unlocks its volume key. */
async function unlockQcow2Luks(file: BlockDevice, header: Qcow2Header, extras: Qcow2HeaderExtras, passphrase: Passphrase): Promise<Qcow2Crypto> {
  const cs = 2 ** header.clusterBits;
  const ch = extras.cryptoHeader;
  if (!ch) throw new CorruptHeaderError('qcow2: LUKS encryption without a full disk encryption header extension');
  if (ch.offset % cs !== 0 || ch.offset < cs || ch.offset >= file.size || ch.length < 592) {
    throw new CorruptHeaderError(`qcow2: encryption header (${ch.length} bytes at ${ch.offset}) is out of range`);
  }
  const length = Math.min(file.size - ch.offset, Math.ceil(ch.length / cs) * cs);
  // Loaded on demand: only encrypted images need the LUKS engine and its KDFs.
  const { LuksVolume } = await import('../luks/volume.js');
  const { parseEncryption } = await import('../crypto/cipher-spec.js');
  const { createSectorCipher } = await import('../crypto/sector-cipher.js');
  const volume = await LuksVolume.open(new SliceDevice(file, ch.offset, length, { readOnly: true }), { readOnly: true });
  if (volume.version !== 1) throw new UnsupportedError('qcow2: the encryption header is not LUKS1, as QEMU writes it');
  volume.assertPayloadAccess();
  const { key } = await volume.unlock(passphrase);
  try {
    return { cipher: createSectorCipher(parseEncryption(volume.encryption, volume.keyBytes), key.expose(), LUKS_IV_SECTOR), key };
  } catch (err) {
    key.wipe();
    throw err;
  }
}

/** Header of a qcow2 image, decoded and validated for inspection (not for reading). */
export interface Qcow2Inspection {
  header: Qcow2Header;
  extras: Qcow2HeaderExtras;
}

/**
 * Reads and validates the header of a qcow2 image without opening it for reading
 * (works for encrypted images and unknown features, e.g. for `info`).
 *
 * @example
 *   const { header, extras } = await inspectQcow2(file);
 */
export async function inspectQcow2(file: BlockDevice): Promise<Qcow2Inspection> {
  const header = await readHeaderArea(file);
  validateQcow2Header(header, { fileSize: file.size, purpose: 'inspect' });
  return { header, extras: decodeQcow2Extras(header) };
}

async function readHeaderArea(file: BlockDevice): Promise<Qcow2Header> {
  if (file.size < 72) throw new CorruptHeaderError(`qcow2: file of ${file.size} bytes is too short for a header`);
  const first = new Uint8Array(Math.min(file.size, 512));
  await file.read(first, 0);
  const bits = new DataView(first.buffer).getUint32(20);
  // The header area is the first cluster; read it only when cluster_bits is sane.
  const clusterSize = bits >= 9 && bits <= 21 ? 2 ** bits : 512;
  let area = first;
  if (clusterSize > first.length && file.size > first.length) {
    area = new Uint8Array(Math.min(file.size, clusterSize));
    await file.read(area, 0);
  }
  return decodeQcow2Header(area);
}

/** One run of guest bytes inside one cluster with the same mapping. */
interface Run {
  kind: 'data' | 'zero' | 'unallocated' | 'compressed';
  /** Guest bytes covered, starting at the queried offset. */
  length: number;
  /** Host byte offset of the queried guest offset (`data`), or of a preallocation (`zero`, 0 = none). */
  host: number;
  /** `compressed`: descriptor of the whole cluster. */
  compressed?: { hostOffset: number; span: number; guestCluster: number };
}

const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;
const COMPRESSED_READAHEAD = 256 * 1024;

export class Qcow2Device implements BlockDevice {
  readonly readOnly = true;
  readonly alignment = 1;
  readonly capabilities: DeviceCapabilities = { discard: false, writeZeroes: false, extents: true, resize: false };
  readonly size: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  /** Refcounts may be stale (v3 dirty bit); harmless for reading. */
  readonly dirty: boolean;
  readonly corrupt: boolean;
  readonly compression: 'zlib' | 'zstd';

  readonly #file: BlockDevice;
  readonly #backing?: BlockDevice;
  readonly #ownsFile: boolean;
  readonly #l1: DataView;
  readonly #clusterBits: number;
  readonly #l2Entries: number;
  readonly #entryBytes: number;
  readonly #subclusterSize: number;
  readonly #zeroFlag: boolean;
  readonly #l2Cache = new Map<number, Promise<DataView>>();
  readonly #l2CacheMax: number;
  /** Reserved host ranges no L2 table or data cluster may overlap. */
  readonly #reserved: Array<[number, number, string]>;
  #lastCompressed?: { guestCluster: number; data: Uint8Array };
  /** Host bytes read ahead for compressed clusters, which QEMU packs back to back. */
  #compressedWindow?: { offset: number; data: Uint8Array };
  #closed = false;
  readonly #crypto?: Qcow2Crypto;

  private constructor(
    readonly header: Qcow2Header,
    readonly extras: Qcow2HeaderExtras,
    file: BlockDevice,
    l1: Uint8Array,
    options: Qcow2OpenOptions,
    crypto: Qcow2Crypto | undefined,
  ) {
    this.#file = file;
    this.#crypto = crypto;
    this.#backing = options.backing;
    this.#ownsFile = options.ownsFile === true;
    this.size = header.size;
    this.#clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.extendedL2 = (header.incompatibleFeatures & INCOMPAT.extendedL2) !== 0n;
    this.dirty = (header.incompatibleFeatures & INCOMPAT.dirty) !== 0n;
    this.corrupt = (header.incompatibleFeatures & INCOMPAT.corrupt) !== 0n;
    this.compression = header.compressionType === 1 ? 'zstd' : 'zlib';
    this.#entryBytes = this.extendedL2 ? 16 : 8;
    this.#l2Entries = this.clusterSize / this.#entryBytes;
    this.#subclusterSize = this.clusterSize / SUBCLUSTERS_PER_CLUSTER;
    this.#zeroFlag = header.version >= 3 && !this.extendedL2;
    this.#l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#l2CacheMax = Math.max(4, Math.floor((options.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES) / this.clusterSize));
    this.#reserved = [
      [0, this.clusterSize, 'the header'],
      [header.l1TableOffset, Math.ceil((header.l1Size * 8) / this.clusterSize) * this.clusterSize, 'the L1 table'],
      [header.refcountTableOffset, header.refcountTableClusters * this.clusterSize, 'the refcount table'],
    ];
    if (extras.cryptoHeader) {
      const { offset, length } = extras.cryptoHeader;
      this.#reserved.push([offset, Math.ceil(length / this.clusterSize) * this.clusterSize, 'the encryption header']);
    }
  }

  /**
   * Opens a qcow2 image for reading. Throws `CorruptHeaderError` for damaged images,
   * `UnsupportedError` for encryption, external data files and unknown incompatible
   * features, and `BackingFileRequiredError` when the image has a backing file and
   * `options.backing` is not given.
   *
   * @example
   *   const file = await FileDevice.open('disk.qcow2', { readOnly: true });
   *   const disk = await Qcow2Device.open(file, { ownsFile: true });
   *   const buf = new Uint8Array(4096);
   *   await disk.read(buf, 0);
   */
  static async open(file: BlockDevice, options: Qcow2OpenOptions = {}): Promise<Qcow2Device> {
    const header = await readHeaderArea(file);
    validateQcow2Header(header, { fileSize: file.size, purpose: 'open', allowLuksEncryption: options.passphrase !== undefined });
    const extras = decodeQcow2Extras(header);
    if (header.backingFileOffset !== 0) {
      if (header.backingFile === undefined) throw new CorruptHeaderError('qcow2: backing file name lies outside the header area');
      if (!options.backing) throw new BackingFileRequiredError(header.backingFile);
    } else if (options.backing) {
      throw new InvalidArgumentError('A backing image was given, but the qcow2 image has no backing file.');
    }
    const l1 = new Uint8Array(header.l1Size * 8);
    if (l1.length > 0) await file.read(l1, header.l1TableOffset);
    const crypto = header.cryptMethod === 2 && options.passphrase ? await unlockQcow2Luks(file, header, extras, options.passphrase) : undefined;
    return new Qcow2Device(header, extras, file, l1, options, crypto);
  }

  /** Name of the backing file recorded in the image, if any. */
  get backingFile(): string | undefined {
    return this.header.backingFile;
  }

  #corrupt(message: string): CorruptHeaderError {
    return new CorruptHeaderError(`qcow2: ${message}`);
  }

  #checkHostRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || offset >= this.#file.size || offset + length > this.#file.size + this.clusterSize) {
      throw this.#corrupt(`${what} at host offset ${offset} lies past the end of the ${this.#file.size}-byte file`);
    }
    for (const [start, len, name] of this.#reserved) {
      if (offset < start + len && start < offset + length) throw this.#corrupt(`${what} at host offset ${offset} overlaps ${name}`);
    }
  }

  async #l2Table(offset: number): Promise<DataView> {
    const cached = this.#l2Cache.get(offset);
    if (cached) {
      this.#l2Cache.delete(offset);
      this.#l2Cache.set(offset, cached);
      return cached;
    }
    if (offset % this.clusterSize !== 0) throw this.#corrupt(`L2 table offset ${offset} is not cluster aligned`);
    this.#checkHostRange(offset, this.clusterSize, 'L2 table');
    if (offset + this.clusterSize > this.#file.size) throw this.#corrupt(`L2 table at ${offset} extends past the end of the file`);
    const load = (async () => {
      const buf = new Uint8Array(this.clusterSize);
      await this.#file.read(buf, offset);
      return new DataView(buf.buffer);
    })();
    this.#l2Cache.set(offset, load);
    load.catch(() => this.#l2Cache.delete(offset));
    while (this.#l2Cache.size > this.#l2CacheMax) this.#l2Cache.delete(this.#l2Cache.keys().next().value!);
    return load;
  }

  /** Maps guest `offset`, covering at most `max` bytes and never crossing a cluster. */
  async #map(offset: number, max: number): Promise<Run> {
    const cs = this.clusterSize;
    const cluster = Math.floor(offset / cs);
    const inCluster = offset - cluster * cs;
    const l1Index = Math.floor(cluster / this.#l2Entries);
    const l2Index = cluster - l1Index * this.#l2Entries;
    if (l1Index >= this.header.l1Size) return { kind: 'unallocated', length: Math.min(max, cs - inCluster), host: 0 };
    const l1 = decodeL1Entry(this.#l1.getUint32(l1Index * 8), this.#l1.getUint32(l1Index * 8 + 4));
    if (l1.l2Offset === 0) {
      // The whole L2 range is unallocated.
      const l2End = (l1Index + 1) * this.#l2Entries * cs;
      return { kind: 'unallocated', length: Math.min(max, l2End - offset), host: 0 };
    }
    const table = await this.#l2Table(l1.l2Offset);
    const at = l2Index * this.#entryBytes;
    const entry = decodeL2Entry(table.getUint32(at), table.getUint32(at + 4), this.#clusterBits, this.#zeroFlag);
    const rest = Math.min(max, cs - inCluster);
    if (entry.kind === 'compressed') {
      if (this.extendedL2 && (table.getUint32(at + 8) !== 0 || table.getUint32(at + 12) !== 0)) {
        throw this.#corrupt(`compressed cluster ${cluster} has a non-zero subcluster bitmap`);
      }
      if (entry.hostOffset < cs || entry.hostOffset >= this.#file.size || entry.span > 2 * cs) {
        throw this.#corrupt(`compressed cluster ${cluster} descriptor (offset ${entry.hostOffset}, ${entry.span} bytes) is out of range`);
      }
      return { kind: 'compressed', length: rest, host: 0, compressed: { hostOffset: entry.hostOffset, span: entry.span, guestCluster: cluster } };
    }
    if (entry.kind === 'zero') return { kind: 'zero', length: rest, host: entry.hostOffset };
    if (!this.extendedL2) {
      if (entry.kind === 'unallocated') return { kind: 'unallocated', length: rest, host: 0 };
      this.#checkData(entry.hostOffset, cluster);
      return { kind: 'data', length: rest, host: entry.hostOffset + inCluster };
    }
    // Extended L2: the state is per subcluster; extend the run over equal neighbours.
    const zeroBits = table.getUint32(at + 8);
    const allocBits = table.getUint32(at + 12);
    const hostCluster = entry.kind === 'normal' ? entry.hostOffset : 0;
    const sc = Math.floor(inCluster / this.#subclusterSize);
    const state = subclusterState(allocBits, zeroBits, sc);
    let end = sc + 1;
    while (end < SUBCLUSTERS_PER_CLUSTER && subclusterState(allocBits, zeroBits, end) === state) end++;
    if (state === 'invalid') throw this.#corrupt(`subcluster ${sc} of cluster ${cluster} is both allocated and zero`);
    const length = Math.min(max, end * this.#subclusterSize - inCluster);
    if (state === 'data') {
      if (hostCluster === 0) throw this.#corrupt(`cluster ${cluster} has allocated subclusters but no host offset`);
      this.#checkData(hostCluster, cluster);
      return { kind: 'data', length, host: hostCluster + inCluster };
    }
    return { kind: state, length, host: 0 };
  }

  #checkData(hostOffset: number, cluster: number): void {
    if (hostOffset % this.clusterSize !== 0) throw this.#corrupt(`data cluster ${cluster} host offset ${hostOffset} is not cluster aligned`);
    this.#checkHostRange(hostOffset, this.clusterSize, `data cluster ${cluster}`);
  }

  #check(offset: number, length: number): void {
    if (this.#closed) throw new OutOfRangeError('qcow2 device is closed');
    if (!rangeInside(offset, length, this.size)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte qcow2 disk`);
    }
  }

  /** Reads host bytes; the part past the end of the file reads as zeros (a short last cluster). */
  async #readHost(buf: Uint8Array, host: number): Promise<void> {
    const inFile = Math.max(0, Math.min(buf.length, this.#file.size - host));
    if (inFile > 0) await this.#file.read(buf.subarray(0, inFile), host);
    buf.fill(0, inFile);
  }

  /** Reads guest data clusters from the host, decrypting them when the image is encrypted. */
  async #readData(buf: Uint8Array, host: number): Promise<void> {
    const crypto = this.#crypto;
    if (!crypto) return this.#readHost(buf, host);
    const start = Math.floor(host / LUKS_IV_SECTOR) * LUKS_IV_SECTOR;
    const end = Math.ceil((host + buf.length) / LUKS_IV_SECTOR) * LUKS_IV_SECTOR;
    const aligned = start === host && end === host + buf.length;
    const sectors = aligned ? buf : new Uint8Array(end - start);
    await this.#readHost(sectors, start);
    crypto.cipher.decrypt(sectors, start / LUKS_IV_SECTOR);
    if (!aligned) buf.set(sectors.subarray(host - start, host - start + buf.length));
  }

  async #readBacking(buf: Uint8Array, offset: number): Promise<void> {
    const backing = this.#backing;
    const inside = backing ? Math.max(0, Math.min(buf.length, backing.size - offset)) : 0;
    if (inside > 0) await backing!.read(buf.subarray(0, inside), offset);
    buf.fill(0, inside);
  }

  async #compressedCluster(c: NonNullable<Run['compressed']>): Promise<Uint8Array> {
    if (this.#lastCompressed?.guestCluster === c.guestCluster) return this.#lastCompressed.data;
    if (this.#crypto) throw new UnsupportedError('qcow2: compressed clusters in an encrypted image are not supported');
    let w = this.#compressedWindow;
    if (!w || c.hostOffset < w.offset || c.hostOffset + c.span > w.offset + w.data.length) {
      w = { offset: c.hostOffset, data: new Uint8Array(Math.max(c.span, COMPRESSED_READAHEAD)) };
      await this.#readHost(w.data, c.hostOffset);
      this.#compressedWindow = w;
    }
    const stored = w.data.subarray(c.hostOffset - w.offset, c.hostOffset - w.offset + c.span);
    const data = decompressCluster(this.compression, stored, this.clusterSize);
    this.#lastCompressed = { guestCluster: c.guestCluster, data };
    return data;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    const end = offset + buf.length;
    // A pending run of host-contiguous data, read with one call when it stops growing.
    let pendGuest = 0;
    let pendHost = 0;
    let pendLen = 0;
    const flush = async () => {
      if (pendLen > 0) await this.#readData(buf.subarray(pendGuest - offset, pendGuest - offset + pendLen), pendHost);
      pendLen = 0;
    };
    let pos = offset;
    while (pos < end) {
      const run = await this.#map(pos, end - pos);
      const dst = buf.subarray(pos - offset, pos - offset + run.length);
      if (run.kind === 'data') {
        if (pendLen > 0 && pendHost + pendLen === run.host && pendGuest + pendLen === pos) {
          pendLen += run.length;
        } else {
          await flush();
          pendGuest = pos;
          pendHost = run.host;
          pendLen = run.length;
        }
      } else {
        await flush();
        if (run.kind === 'zero') dst.fill(0);
        else if (run.kind === 'unallocated') await this.#readBacking(dst, pos);
        else {
          const plain = await this.#compressedCluster(run.compressed!);
          const inCluster = pos - run.compressed!.guestCluster * this.clusterSize;
          dst.set(plain.subarray(inCluster, inCluster + run.length));
        }
      }
      pos += run.length;
    }
    await flush();
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length);
    const out: Extent[] = [];
    const push = (e: Extent) => {
      const last = out[out.length - 1];
      if (last && last.hole === e.hole && last.zero === e.zero && last.offset + last.length === e.offset) last.length += e.length;
      else if (e.length > 0) out.push({ ...e });
    };
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const run = await this.#map(pos, end - pos);
      if (run.kind === 'data' || run.kind === 'compressed') push({ offset: pos, length: run.length, hole: false, zero: false });
      else if (run.kind === 'zero') push({ offset: pos, length: run.length, hole: run.host === 0, zero: true });
      else if (this.#backing && pos < this.#backing.size) {
        const inside = Math.min(run.length, this.#backing.size - pos);
        for (const e of await this.#backing.extents(pos, inside)) push(e);
        push({ offset: pos + inside, length: run.length - inside, hole: true, zero: true });
      } else push({ offset: pos, length: run.length, hole: true, zero: true });
      pos += run.length;
    }
    return out;
  }

  async write(): Promise<void> {
    throw new ReadOnlyDeviceError('qcow2 images are opened read-only.');
  }

  async writeZeroes(): Promise<void> {
    throw new ReadOnlyDeviceError('qcow2 images are opened read-only.');
  }

  async discard(): Promise<void> {
    throw new ReadOnlyDeviceError('qcow2 images are opened read-only.');
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#l2Cache.clear();
    this.#lastCompressed = undefined;
    this.#compressedWindow = undefined;
    this.#crypto?.cipher.wipe();
    this.#crypto?.key.wipe();
    if (this.#ownsFile) {
      await this.#file.close();
      await this.#backing?.close();
    }
  }
}
