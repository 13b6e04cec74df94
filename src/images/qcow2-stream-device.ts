/**
 * The two devices behind a qcow2 image written front to back (see `qcow2-stream-layout.ts`):
 *
 * - `ClusterScanDevice` takes the pipeline's writes of a first pass (zero blocks skipped) and
 *   records which guest clusters hold data; nothing is stored.
 * - `Qcow2StreamDevice` takes the same writes in a second pass and writes the image file in
 *   host order into a sequential device (an upload stream): the planned metadata, then each
 *   data cluster in guest order, zero-filled where the pipeline skipped zero blocks.
 *
 * The second pass must see data exactly where the first did; a write into a cluster the plan
 * left unallocated means the source changed between the passes (`IntegrityError`).
 *
 * For a compressed image the scan assembles each data cluster and deflates it to learn its
 * stored length; the second pass deflates it again and must get the same length.
 */
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { IntegrityError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';
import { compressClusterDeflate } from '../formats/qcow2/compression.js';
import type { Qcow2StreamPlan } from './qcow2-stream-layout.js';

abstract class WriteOnlyDevice implements BlockDevice {
  readonly readOnly = false;
  readonly capabilities: DeviceCapabilities = { discard: false, writeZeroes: false, extents: false, resize: false };
  readonly alignment = 1;
  abstract readonly size: number;
  abstract write(buf: Uint8Array, offset: number): Promise<void>;
  async read(): Promise<void> {
    throw new ReadOnlyDeviceError('This device is write-only.');
  }
  /** Zeros are what an unwritten range means here. */
  async writeZeroes(): Promise<void> {}
  async discard(): Promise<void> {}
  async flush(): Promise<void> {}
  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, hole: false, zero: false }];
  }
  async close(): Promise<void> {}
}

/**
 * Gathers in-order writes into whole guest clusters: `take` is called once per cluster that
 * received data, with its full content (zero where nothing was written), in guest order.
 */
class ClusterAssembler {
  readonly #cs: number;
  readonly #cluster: Uint8Array;
  /** Guest cluster being assembled, or -1. */
  #current = -1;
  readonly #take: (cluster: number, data: Uint8Array) => Promise<void>;

  constructor(clusterSize: number, take: (cluster: number, data: Uint8Array) => Promise<void>) {
    this.#cs = clusterSize;
    this.#cluster = new Uint8Array(clusterSize);
    this.#take = take;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.#cs;
    let done = 0;
    while (done < buf.length) {
      const g = offset + done;
      const c = Math.floor(g / cs);
      if (c !== this.#current) {
        if (c < this.#current) throw new IntegrityError(`qcow2 stream: write at ${g} goes back to an earlier cluster.`);
        await this.flush();
        this.#current = c;
      }
      const within = g - c * cs;
      const take = Math.min(cs - within, buf.length - done);
      this.#cluster.set(buf.subarray(done, done + take), within);
      done += take;
    }
  }

  /** Hands over the cluster being assembled, if any. */
  async flush(): Promise<void> {
    if (this.#current < 0) return;
    const c = this.#current;
    this.#current = -1;
    await this.#take(c, this.#cluster);
    this.#cluster.fill(0);
  }
}

function checkRange(buf: Uint8Array, offset: number, size: number): void {
  if (offset < 0 || offset + buf.length > size) throw new OutOfRangeError(`Write at ${offset} is outside the ${size}-byte disk.`);
}

export interface ClusterScanOptions {
  clusterSize?: number;
  /** Deflate each data cluster to learn its stored length (a compressed image); zlib level 1..9. */
  compressionLevel?: number;
}

/** Pass one: which clusters of a `size`-byte disk receive data (and, compressing, their stored lengths). */
export class ClusterScanDevice extends WriteOnlyDevice {
  readonly size: number;
  readonly clusterSize: number;
  /** One flag per guest cluster (1 = holds data). */
  readonly allocated: Uint8Array;
  readonly #level: number | undefined;
  /** Compressing: deflate length per data cluster (0 = stored whole), in guest order. */
  readonly #lengths: number[] = [];
  readonly #assembler: ClusterAssembler | undefined;

  constructor(size: number, options: ClusterScanOptions = {}) {
    super();
    this.size = size;
    this.clusterSize = options.clusterSize ?? 65536;
    this.allocated = new Uint8Array(Math.ceil(size / this.clusterSize));
    this.#level = options.compressionLevel;
    if (this.#level !== undefined) {
      const level = this.#level;
      this.#assembler = new ClusterAssembler(this.clusterSize, async (_c, data) => {
        this.#lengths.push(compressClusterDeflate(data, level)?.length ?? 0);
      });
    }
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (buf.length === 0) return;
    checkRange(buf, offset, this.size);
    this.allocated.fill(1, Math.floor(offset / this.clusterSize), Math.floor((offset + buf.length - 1) / this.clusterSize) + 1);
    await this.#assembler?.write(buf, offset);
  }

  /** Compressing: the stored length of each data cluster, once every write is in. */
  async storedLengths(): Promise<Uint32Array | undefined> {
    if (!this.#assembler) return undefined;
    await this.#assembler.flush();
    return Uint32Array.from(this.#lengths);
  }
}

/** Pass two: the image file, in host order, into `out` (which takes sequential writes from 0). */
export class Qcow2StreamDevice extends WriteOnlyDevice {
  readonly size: number;
  readonly #plan: Qcow2StreamPlan;
  readonly #out: BlockDevice;
  readonly #level: number;
  readonly #assembler: ClusterAssembler;
  /** Index into plan.dataClusters of the next cluster to emit. */
  #index = 0;
  /** File bytes written so far (the out device takes them in order). */
  #written = 0;

  constructor(plan: Qcow2StreamPlan, out: BlockDevice, options: { compressionLevel?: number } = {}) {
    super();
    this.size = plan.size;
    this.#plan = plan;
    this.#out = out;
    this.#level = options.compressionLevel ?? 6;
    this.#assembler = new ClusterAssembler(plan.clusterSize, (c, data) => this.#emit(c, data));
  }

  /** Writes the header and tables. */
  async start(): Promise<void> {
    await this.#put(this.#plan.metadata, 0);
  }

  #changed(what: string): IntegrityError {
    return new IntegrityError(`The source changed between the two passes of the qcow2 upload (${what}).`);
  }

  /** Whether guest cluster `c` is one of the plan's data clusters (binary search: they ascend). */
  #planned(c: number): boolean {
    const clusters = this.#plan.dataClusters;
    let lo = 0;
    let hi = clusters.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const v = clusters[mid]!;
      if (v === c) return true;
      if (v < c) lo = mid + 1;
      else hi = mid - 1;
    }
    return false;
  }

  /** Writes `data` at file offset `at`, zero-filling any gap before it (padding between packed clusters). */
  async #put(data: Uint8Array, at: number): Promise<void> {
    if (at < this.#written) throw new Error(`qcow2 stream: write at ${at} before ${this.#written}`);
    if (at > this.#written) await this.#out.write(new Uint8Array(at - this.#written), this.#written);
    await this.#out.write(data, at);
    this.#written = at + data.length;
  }

  /** Emits guest cluster `c` (its full content) at its planned place. */
  async #emit(c: number, data: Uint8Array): Promise<void> {
    const clusters = this.#plan.dataClusters;
    if (this.#index < clusters.length && clusters[this.#index]! < c) throw this.#changed(`cluster ${clusters[this.#index]} has no data now`);
    if (clusters[this.#index] !== c) throw this.#changed(`cluster ${c} holds data now`);
    const wanted = this.#plan.storedLengths?.[this.#index] ?? 0;
    let stored = data;
    if (wanted > 0) {
      const packed = compressClusterDeflate(data, this.#level);
      if (packed?.length !== wanted) throw this.#changed(`cluster ${c} compresses differently now`);
      stored = packed;
    } else if (this.#plan.storedLengths && compressClusterDeflate(data, this.#level) !== undefined) {
      throw this.#changed(`cluster ${c} compresses now`);
    }
    await this.#put(stored, this.#plan.hostOffsets[this.#index]!);
    this.#index++;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (buf.length === 0) return;
    checkRange(buf, offset, this.size);
    const cs = this.#plan.clusterSize;
    // Fail at once (before more bytes go out) when data lands where the plan has none.
    for (let c = Math.floor(offset / cs); c <= Math.floor((offset + buf.length - 1) / cs); c++) {
      if (!this.#planned(c)) throw this.#changed(`cluster ${c} holds data now`);
    }
    // Fast path (uncompressed plans): whole, consecutive planned clusters go through as they are.
    if (!this.#plan.storedLengths && offset % cs === 0 && buf.length % cs === 0) {
      await this.#assembler.flush();
      const first = offset / cs;
      const n = buf.length / cs;
      const clusters = this.#plan.dataClusters;
      if (clusters[this.#index] === first && clusters[this.#index + n - 1] === first + n - 1) {
        await this.#put(buf, this.#plan.hostOffsets[this.#index]!);
        this.#index += n;
        return;
      }
    }
    await this.#assembler.write(buf, offset);
  }

  /** Emits what is left and pads the file to its planned size; every planned cluster must have received data. */
  async finish(): Promise<void> {
    await this.#assembler.flush();
    const clusters = this.#plan.dataClusters;
    if (this.#index < clusters.length) throw this.#changed(`cluster ${clusters[this.#index]} has no data now`);
    const end = this.#plan.fileSize;
    if (this.#written < end) {
      await this.#out.write(new Uint8Array(end - this.#written), this.#written);
      this.#written = end;
    }
  }
}
