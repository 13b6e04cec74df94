/**
 * Writes a qcow2 v3 (compat 1.1) image from a stream of writes, e.g. for an export.
 * Follows QEMU docs/interop/qcow2.txt; the result is what `qemu-img check` calls clean.
 *
 * Layout: cluster 0 is the header; guest data clusters (and packed compressed data)
 * are appended in arrival order; on `close()` the L2 tables, the L1 table, the refcount
 * table and refcount blocks are appended, and the header is written last.
 *
 * Interrupted writes: `create()` zeroes the first cluster and `close()` writes the header
 * there last, so until `close()` succeeds the file carries no qcow2 magic (not even an old
 * one on a reused target) and no tool mistakes it for a valid image.
 *
 * Memory: the L2 tables of touched guest regions are held in memory until `close()`
 * (one cluster per `clusterSize^2/8` guest bytes, e.g. 64 KiB per 512 MiB of guest data
 * at the default cluster size), as are partially written clusters.
 */
import { type BlockDevice, type DeviceCapabilities, type Extent, rangeInside } from '../block-device.js';
import { DeviceIoError, InsufficientSpaceError, InvalidArgumentError, OutOfRangeError } from '../errors.js';
import { QCOW2_WRITE_REFCOUNT_ORDER, encodeQcow2Header, newQcow2Header } from '../formats/qcow2/header.js';
import { decodeL2Entry, encodeL1Entry, encodeL2Compressed, encodeL2Normal } from '../formats/qcow2/l2-entry.js';
import { refcountBlockEntries, setRefcount } from '../formats/qcow2/refcount.js';
import { compressClusterDeflate, decompressCluster } from '../formats/qcow2/compression.js';
import { isAllZero } from './zero-runs.js';

export interface Qcow2WriterOptions {
  /** Virtual disk size in bytes. */
  size: number;
  /** Power of two from 512 to 2 MiB; default 64 KiB. */
  clusterSize?: number;
  /** Store each cluster deflate-compressed when that saves space (`qemu-img convert -c`). */
  compress?: boolean;
  /** zlib level 1..9 for `compress` (default 6). */
  compressionLevel?: number;
}

/** A device the writer can grow (`FileDevice` has `resize`). */
type GrowableDevice = BlockDevice & { resize?: (size: number) => Promise<void> };

const REFCOUNT_ORDER = QCOW2_WRITE_REFCOUNT_ORDER;
const MAX_REFCOUNT = 0xffff;
const GROW_STEP = 64 * 1024 * 1024;

export class Qcow2Writer implements BlockDevice {
  readonly readOnly = false;
  readonly capabilities: DeviceCapabilities = { discard: true, writeZeroes: true, extents: true, resize: false };
  readonly size: number;
  readonly clusterSize: number;
  /** Writes of whole, aligned clusters avoid buffering partial clusters. */
  readonly alignment: number;

  readonly #file: GrowableDevice;
  readonly #clusterBits: number;
  readonly #l2Entries: number;
  readonly #l1Size: number;
  readonly #compress: boolean;
  readonly #level: number;
  /** In-memory L2 tables by L1 index. */
  readonly #l2 = new Map<number, DataView>();
  /** Partially written clusters that are not allocated yet (guest cluster -> bytes + covered ranges). */
  readonly #partial = new Map<number, { data: Uint8Array; ranges: Array<[number, number]> }>();
  /** Refcount per host cluster. */
  #refcounts = new Uint32Array(1024);
  /** Next free host byte (cluster aligned). */
  #next: number;
  /** Where the next compressed cluster may go, and the end of its host cluster. */
  #compCursor = 0;
  #compEnd = 0;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(file: GrowableDevice, options: Required<Pick<Qcow2WriterOptions, 'size' | 'clusterSize'>> & Qcow2WriterOptions) {
    this.#file = file;
    this.size = options.size;
    this.clusterSize = options.clusterSize;
    this.alignment = options.clusterSize;
    this.#clusterBits = Math.log2(options.clusterSize);
    this.#l2Entries = options.clusterSize / 8;
    this.#l1Size = Math.ceil(options.size / options.clusterSize / this.#l2Entries);
    this.#compress = options.compress === true;
    this.#level = options.compressionLevel ?? 6;
    this.#next = options.clusterSize; // cluster 0: the header, written by close()
    this.#refcounts[0] = 1;
  }

  /**
   * Starts a new image on `file` (an empty file, grown as needed; a fixed-size device
   * must be large enough). Write the guest data, then `close()` to finalise.
   *
   * @example
   *   const file = await FileDevice.open('out.qcow2', { create: true, size: 0 });
   *   const qcow = await Qcow2Writer.create(file, { size: 1 << 30, compress: true });
   *   await qcow.write(cluster, 0);
   *   await qcow.close(); // writes metadata and header; also closes `file`
   */
  static async create(file: BlockDevice, options: Qcow2WriterOptions): Promise<Qcow2Writer> {
    const clusterSize = options.clusterSize ?? 65536;
    if (!Number.isInteger(Math.log2(clusterSize)) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024) {
      throw new InvalidArgumentError(`qcow2 cluster size ${clusterSize} must be a power of two from 512 to 2 MiB.`);
    }
    if (!Number.isSafeInteger(options.size) || options.size < 0) throw new InvalidArgumentError(`qcow2 virtual size ${options.size} is invalid.`);
    const l1Bytes = Math.ceil(options.size / clusterSize / (clusterSize / 8)) * 8;
    if (l1Bytes > 32 * 1024 * 1024) {
      throw new InvalidArgumentError(`qcow2 virtual size ${options.size} needs an L1 table over 32 MiB; use a larger cluster size.`);
    }
    const level = options.compressionLevel ?? 6;
    if (!Number.isInteger(level) || level < 1 || level > 9) throw new InvalidArgumentError(`compression level ${level} must be 1..9.`);
    if (file.readOnly) throw new InvalidArgumentError('The qcow2 target is read-only.');
    const writer = new Qcow2Writer(file, { ...options, clusterSize });
    // Clear the header cluster now: a reused target must not keep an old image's magic while we write.
    await writer.#ensureFile(clusterSize);
    await file.write(new Uint8Array(clusterSize), 0);
    return writer;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #check(offset: number, length: number): void {
    if (this.#closed) throw new DeviceIoError('qcow2 writer is closed');
    if (!rangeInside(offset, length, this.size)) {
      throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte qcow2 disk`);
    }
  }

  // ---- L2 entries and refcounts ----

  #table(l1Index: number, create: boolean): DataView | undefined {
    let t = this.#l2.get(l1Index);
    if (!t && create) {
      t = new DataView(new ArrayBuffer(this.clusterSize));
      this.#l2.set(l1Index, t);
    }
    return t;
  }

  #entry(cluster: number) {
    const t = this.#table(Math.floor(cluster / this.#l2Entries), false);
    if (!t) return { kind: 'unallocated' as const };
    const at = (cluster % this.#l2Entries) * 8;
    return decodeL2Entry(t.getUint32(at), t.getUint32(at + 4), this.#clusterBits, true);
  }

  #setEntry(cluster: number, [hi, lo]: [number, number]): void {
    const t = this.#table(Math.floor(cluster / this.#l2Entries), hi !== 0 || lo !== 0);
    if (!t) return;
    const at = (cluster % this.#l2Entries) * 8;
    t.setUint32(at, hi);
    t.setUint32(at + 4, lo);
  }

  #ref(hostCluster: number, delta: number): void {
    if (hostCluster >= this.#refcounts.length) {
      const grown = new Uint32Array(Math.max(hostCluster + 1, this.#refcounts.length * 2));
      grown.set(this.#refcounts);
      this.#refcounts = grown;
    }
    this.#refcounts[hostCluster] = this.#refcounts[hostCluster]! + delta;
  }

  /** Host clusters a compressed descriptor references, as `qemu-img check` counts them. */
  #compressedClusters(hostOffset: number, span: number): [number, number] {
    return [Math.floor(hostOffset / this.clusterSize), Math.floor((hostOffset + span - 1) / this.clusterSize)];
  }

  /** Drops the storage of a guest cluster (its space becomes free, refcount 0). */
  #release(cluster: number): void {
    const e = this.#entry(cluster);
    if (e.kind === 'normal') this.#ref(e.hostOffset / this.clusterSize, -1);
    else if (e.kind === 'compressed') {
      const [first, last] = this.#compressedClusters(e.hostOffset, e.span);
      for (let c = first; c <= last; c++) this.#ref(c, -1);
    }
    this.#setEntry(cluster, [0, 0]);
  }

  async #ensureFile(end: number): Promise<void> {
    if (end <= this.#file.size) return;
    if (typeof this.#file.resize !== 'function' || !this.#file.capabilities.resize) {
      throw new InsufficientSpaceError(`The qcow2 target (${this.#file.size} bytes) is too small: ${end} bytes needed.`);
    }
    await this.#file.resize(Math.max(end, Math.min(this.#file.size * 2, this.#file.size + GROW_STEP)));
  }

  #allocate(clusters: number): number {
    const host = this.#next;
    this.#next += clusters * this.clusterSize;
    for (let i = 0; i < clusters; i++) this.#ref(host / this.clusterSize + i, 1);
    return host;
  }

  // ---- storing clusters ----

  /** Stores the full content of guest cluster `cluster` (bytes past the disk end are zero). */
  async #store(cluster: number, data: Uint8Array): Promise<void> {
    const e = this.#entry(cluster);
    const zero = isAllZero(data);
    if (e.kind === 'normal' && !zero) {
      await this.#file.write(data, e.hostOffset);
      return;
    }
    this.#release(cluster);
    if (zero) return; // all-zero clusters stay unallocated: sparse, and read back as zeros
    if (this.#compress) {
      const packed = compressClusterDeflate(data, this.#level);
      if (packed) {
        await this.#storeCompressed(cluster, packed);
        return;
      }
    }
    const host = this.#allocate(1);
    await this.#ensureFile(host + this.clusterSize);
    await this.#file.write(data, host);
    this.#setEntry(cluster, encodeL2Normal(host, true));
  }

  async #storeCompressed(cluster: number, packed: Uint8Array): Promise<void> {
    const hostCluster = Math.floor(this.#compCursor / this.clusterSize);
    // Compressed data never crosses a host cluster here, so each one references exactly one cluster.
    if (this.#compCursor === 0 || this.#compCursor + packed.length > this.#compEnd || this.#refcounts[hostCluster]! >= MAX_REFCOUNT) {
      this.#compCursor = this.#allocate(1);
      this.#ref(this.#compCursor / this.clusterSize, -1); // counted per compressed cluster below
      this.#compEnd = this.#compCursor + this.clusterSize;
      await this.#ensureFile(this.#compEnd);
    }
    const at = this.#compCursor;
    await this.#file.write(packed, at);
    this.#compCursor += packed.length;
    const entry = encodeL2Compressed(at, packed.length, this.#clusterBits);
    this.#setEntry(cluster, entry);
    const e = decodeL2Entry(entry[0], entry[1], this.#clusterBits, true);
    if (e.kind !== 'compressed') throw new Error('unreachable: compressed entry decodes as compressed');
    const [first, last] = this.#compressedClusters(e.hostOffset, e.span);
    for (let c = first; c <= last; c++) this.#ref(c, 1);
  }

  /** Current content of guest cluster `cluster` (for a partial overwrite). */
  async #load(cluster: number): Promise<Uint8Array> {
    const e = this.#entry(cluster);
    const out = new Uint8Array(this.clusterSize);
    if (e.kind === 'normal') await this.#file.read(out, e.hostOffset);
    else if (e.kind === 'compressed') {
      const stored = new Uint8Array(Math.min(e.span, this.#file.size - e.hostOffset));
      await this.#file.read(stored, e.hostOffset);
      return decompressCluster('zlib', stored, this.clusterSize);
    }
    return out;
  }

  /** Guest bytes of cluster `cluster` that lie inside the disk. */
  #clusterLength(cluster: number): number {
    return Math.min(this.clusterSize, this.size - cluster * this.clusterSize);
  }

  async #writePartial(cluster: number, piece: Uint8Array, inCluster: number): Promise<void> {
    if (this.#entry(cluster).kind !== 'unallocated') {
      // Already stored: read-modify-write.
      const data = await this.#load(cluster);
      data.set(piece, inCluster);
      await this.#store(cluster, data);
      return;
    }
    let p = this.#partial.get(cluster);
    if (!p) {
      p = { data: new Uint8Array(this.clusterSize), ranges: [] };
      this.#partial.set(cluster, p);
    }
    p.data.set(piece, inCluster);
    p.ranges = mergeRange(p.ranges, inCluster, inCluster + piece.length);
    const r = p.ranges[0]!;
    if (p.ranges.length === 1 && r[0] === 0 && r[1] >= this.#clusterLength(cluster)) {
      this.#partial.delete(cluster);
      await this.#store(cluster, p.data);
    }
  }

  /**
   * Writes guest data. Whole aligned clusters are stored directly (fresh non-zero runs
   * with one host write); partial clusters are buffered until complete or `close()`.
   */
  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    await this.#serial(async () => {
      const cs = this.clusterSize;
      let pos = offset;
      const end = offset + buf.length;
      while (pos < end) {
        const cluster = Math.floor(pos / cs);
        const inCluster = pos - cluster * cs;
        const full = this.#clusterLength(cluster);
        const n = Math.min(end - pos, cs - inCluster);
        const piece = buf.subarray(pos - offset, pos - offset + n);
        if (inCluster !== 0 || n < full || this.#partial.has(cluster)) {
          if (this.#partial.has(cluster) && inCluster === 0 && n >= full) this.#partial.delete(cluster);
          else {
            await this.#writePartial(cluster, piece, inCluster);
            pos += n;
            continue;
          }
        }
        // A run of whole, fresh, non-zero clusters: allocate contiguously, write once.
        if (!this.#compress && n === cs) {
          let count = 0;
          while (
            pos + (count + 1) * cs <= end &&
            this.#entry(cluster + count).kind === 'unallocated' &&
            !this.#partial.has(cluster + count) &&
            !isAllZero(buf.subarray(pos - offset + count * cs, pos - offset + (count + 1) * cs))
          ) {
            count++;
          }
          if (count > 1) {
            const host = this.#allocate(count);
            await this.#ensureFile(host + count * cs);
            await this.#file.write(buf.subarray(pos - offset, pos - offset + count * cs), host);
            for (let i = 0; i < count; i++) this.#setEntry(cluster + i, encodeL2Normal(host + i * cs, true));
            pos += count * cs;
            continue;
          }
        }
        let data = piece;
        if (n < cs) {
          data = new Uint8Array(cs);
          data.set(piece);
        }
        await this.#store(cluster, data);
        pos += n;
      }
    });
  }

  /** Reads back what has been written (unwritten ranges read as zeros). */
  async read(buf: Uint8Array, offset: number): Promise<void> {
    this.#check(offset, buf.length);
    await this.#serial(async () => {
      const cs = this.clusterSize;
      let pos = offset;
      const end = offset + buf.length;
      while (pos < end) {
        const cluster = Math.floor(pos / cs);
        const inCluster = pos - cluster * cs;
        const n = Math.min(end - pos, cs - inCluster);
        const dst = buf.subarray(pos - offset, pos - offset + n);
        const p = this.#partial.get(cluster);
        const e = this.#entry(cluster);
        if (p) dst.set(p.data.subarray(inCluster, inCluster + n));
        else if (e.kind === 'normal') await this.#file.read(dst, e.hostOffset + inCluster);
        else if (e.kind === 'compressed') dst.set((await this.#load(cluster)).subarray(inCluster, inCluster + n));
        else dst.fill(0);
        pos += n;
      }
    });
  }

  /** Zeroes a range: whole clusters are deallocated, partial ones written as zeros. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#check(offset, length);
    await this.#serial(async () => {
      const cs = this.clusterSize;
      let pos = offset;
      const end = offset + length;
      while (pos < end) {
        const cluster = Math.floor(pos / cs);
        const inCluster = pos - cluster * cs;
        const n = Math.min(end - pos, cs - inCluster);
        if (inCluster === 0 && n >= this.#clusterLength(cluster)) {
          this.#partial.delete(cluster);
          this.#release(cluster);
        } else {
          await this.#writePartial(cluster, new Uint8Array(n), inCluster);
        }
        pos += n;
      }
    });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.#check(offset, length);
    const out: Extent[] = [];
    const cs = this.clusterSize;
    for (let pos = offset; pos < offset + length; ) {
      const cluster = Math.floor(pos / cs);
      const n = Math.min(offset + length - pos, cs - (pos - cluster * cs));
      const hole = this.#entry(cluster).kind === 'unallocated' && !this.#partial.has(cluster);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ offset: pos, length: n, hole, zero: hole });
      pos += n;
    }
    return out;
  }

  /** Makes written data durable (the image becomes valid only with `close()`). */
  flush(): Promise<void> {
    return this.#serial(() => this.#file.flush());
  }

  /**
   * Finalises the image: stores buffered partial clusters, appends L2 tables, the L1
   * table and refcount structures, writes the header last, and closes the target.
   */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return this.#serial(async () => {
      for (const [cluster, p] of [...this.#partial]) {
        this.#partial.delete(cluster);
        await this.#store(cluster, p.data);
      }
      this.#closed = true;
      await this.#finish();
      await this.#file.close();
    });
  }

  async #finish(): Promise<void> {
    const cs = this.clusterSize;
    // L2 tables that still map something.
    const l1 = new DataView(new ArrayBuffer(Math.ceil((this.#l1Size * 8) / cs) * cs));
    const l2Writes: Array<[DataView, number]> = [];
    for (const [l1Index, table] of [...this.#l2].sort((a, b) => a[0] - b[0])) {
      if (isAllZero(new Uint8Array(table.buffer))) continue;
      const host = this.#allocate(1);
      l2Writes.push([table, host]);
      const [hi, lo] = encodeL1Entry(host, true);
      l1.setUint32(l1Index * 8, hi);
      l1.setUint32(l1Index * 8 + 4, lo);
    }
    // An empty disk has no L1 table at all (offset 0), as qemu-img creates it.
    const l1Offset = l1.byteLength > 0 ? this.#allocate(l1.byteLength / cs) : 0;
    // Refcount table and blocks must count themselves: iterate to a fixed point.
    const perBlock = refcountBlockEntries(this.#clusterBits, REFCOUNT_ORDER);
    const used = this.#next / cs;
    let tableClusters = 1;
    let blocks = 0;
    for (;;) {
      const nextBlocks = Math.ceil((used + tableClusters + blocks) / perBlock);
      const nextTable = Math.max(1, Math.ceil((nextBlocks * 8) / cs));
      if (nextBlocks === blocks && nextTable === tableClusters) break;
      blocks = nextBlocks;
      tableClusters = nextTable;
    }
    const tableOffset = this.#allocate(tableClusters);
    const blocksOffset = this.#allocate(blocks);
    const end = this.#next;
    await this.#ensureFile(end);

    for (const [table, host] of l2Writes) await this.#file.write(new Uint8Array(table.buffer), host);
    if (l1.byteLength > 0) await this.#file.write(new Uint8Array(l1.buffer), l1Offset);
    const rtable = new DataView(new ArrayBuffer(tableClusters * cs));
    const rblocks = new Uint8Array(blocks * cs);
    for (let b = 0; b < blocks; b++) {
      const [hi, lo] = encodeL1Entry(blocksOffset + b * cs, false);
      rtable.setUint32(b * 8, hi);
      rtable.setUint32(b * 8 + 4, lo);
    }
    const clusters = end / cs;
    for (let c = 0; c < clusters; c++) {
      const count = c < this.#refcounts.length ? this.#refcounts[c]! : 0;
      if (count === 0) continue;
      if (count > MAX_REFCOUNT) throw new Error(`unreachable: refcount ${count} of cluster ${c} overflows`);
      setRefcount(rblocks.subarray(Math.floor(c / perBlock) * cs), c % perBlock, count, REFCOUNT_ORDER);
    }
    await this.#file.write(new Uint8Array(rtable.buffer), tableOffset);
    await this.#file.write(rblocks, blocksOffset);
    // Trim growth slack (a fixed-size device keeps its size).
    if (this.#file.size > end && typeof this.#file.resize === 'function' && this.#file.capabilities.resize) await this.#file.resize(end);
    await this.#file.flush();

    const header = newQcow2Header({ clusterBits: this.#clusterBits, size: this.size, l1Size: this.#l1Size, l1TableOffset: l1Offset, refcountTableOffset: tableOffset, refcountTableClusters: tableClusters });
    await this.#file.write(encodeQcow2Header(header), 0);
    await this.#file.flush();
  }
}

function mergeRange(ranges: Array<[number, number]>, start: number, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let s = start;
  let e = end;
  for (const [a, b] of ranges) {
    if (b < s || a > e) out.push([a, b]);
    else {
      s = Math.min(s, a);
      e = Math.max(e, b);
    }
  }
  out.push([s, e]);
  return out.sort((x, y) => x[0] - y[0]);
}
