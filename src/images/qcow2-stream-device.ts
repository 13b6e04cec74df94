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
 */
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { IntegrityError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';
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

/** Pass one: which clusters of a `size`-byte disk receive data. */
export class ClusterScanDevice extends WriteOnlyDevice {
  readonly size: number;
  readonly clusterSize: number;
  /** One flag per guest cluster (1 = holds data). */
  readonly allocated: Uint8Array;

  constructor(size: number, clusterSize = 65536) {
    super();
    this.size = size;
    this.clusterSize = clusterSize;
    this.allocated = new Uint8Array(Math.ceil(size / clusterSize));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (buf.length === 0) return;
    if (offset < 0 || offset + buf.length > this.size) throw new OutOfRangeError(`Write at ${offset} is outside the ${this.size}-byte disk.`);
    this.allocated.fill(1, Math.floor(offset / this.clusterSize), Math.floor((offset + buf.length - 1) / this.clusterSize) + 1);
  }
}

/** Pass two: the image file, in host order, into `out` (which takes sequential writes from 0). */
export class Qcow2StreamDevice extends WriteOnlyDevice {
  readonly size: number;
  readonly #plan: Qcow2StreamPlan;
  readonly #out: BlockDevice;
  readonly #dataStart: number;
  /** Index into plan.dataClusters of the cluster being assembled. */
  #index = 0;
  /** Its bytes (zero where nothing was written). */
  readonly #cluster: Uint8Array;
  #dirty = false;

  constructor(plan: Qcow2StreamPlan, out: BlockDevice) {
    super();
    this.size = plan.size;
    this.#plan = plan;
    this.#out = out;
    this.#dataStart = plan.metadata.length;
    this.#cluster = new Uint8Array(plan.clusterSize);
  }

  /** Writes the header and tables. */
  async start(): Promise<void> {
    await this.#out.write(this.#plan.metadata, 0);
  }

  #changed(what: string): IntegrityError {
    return new IntegrityError(`The source changed between the two passes of the qcow2 upload (${what}).`);
  }

  /** Emits the current cluster and moves to the next planned one. */
  async #emit(): Promise<void> {
    await this.#out.write(this.#cluster, this.#dataStart + this.#index * this.#plan.clusterSize);
    this.#cluster.fill(0);
    this.#dirty = false;
    this.#index++;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.#plan.clusterSize;
    const clusters = this.#plan.dataClusters;
    let done = 0;
    while (done < buf.length) {
      const g = offset + done;
      const c = Math.floor(g / cs);
      // Planned clusters before this one that the pipeline skipped entirely were all zeros.
      while (this.#index < clusters.length && clusters[this.#index]! < c) {
        if (!this.#dirty) throw this.#changed(`cluster ${clusters[this.#index]} has no data now`);
        await this.#emit();
      }
      if (clusters[this.#index] !== c) throw this.#changed(`cluster ${c} holds data now`);
      const within = g - c * cs;
      const take = Math.min(cs - within, buf.length - done);
      // Fast path: whole, consecutive clusters go through without assembling.
      if (within === 0 && !this.#dirty && take === cs) {
        let run = 1;
        while (
          (run + 1) * cs <= buf.length - done &&
          clusters[this.#index + run] === c + run
        ) run++;
        await this.#out.write(buf.subarray(done, done + run * cs), this.#dataStart + this.#index * cs);
        this.#index += run;
        done += run * cs;
        continue;
      }
      this.#cluster.set(buf.subarray(done, done + take), within);
      this.#dirty = true;
      done += take;
      if (within + take === cs) await this.#emit();
    }
  }

  /** Emits what is left; every planned cluster must have received data. */
  async finish(): Promise<void> {
    const clusters = this.#plan.dataClusters;
    while (this.#index < clusters.length) {
      if (!this.#dirty) throw this.#changed(`cluster ${clusters[this.#index]} has no data now`);
      await this.#emit();
    }
  }
}
