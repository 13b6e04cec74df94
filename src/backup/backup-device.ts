/**
 * A backup seen as a read-only `BlockDevice`: reads are served from the backup's chunks, fetched
 * and authenticated on demand. It lets the image pipeline (src/workflows/convert.ts) read a backed-up
 * container as it reads any image — `backup restore --rekey-on-restore` opens the backed-up LUKS
 * header and ciphertext through it and re-encrypts them into a new volume in one pass.
 *
 * Each chunk is fetched once while it is being read: a fetched chunk stays cached until every byte
 * of it was read, or until it is among the oldest when more than `cacheChunks` are held (the
 * pipeline reads ahead in parallel, so several chunks are in flight at once).
 */
import { OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { rangeInside } from '../block-device.js';
import type { BackupManifest } from './manifest.js';
import type { Repository } from './repository.js';

interface Cached {
  plain: Promise<Uint8Array | null>;
  /** Bytes of the chunk not yet read. */
  unread: number;
}

export class BackupDevice implements BlockDevice {
  readonly readOnly = true;
  readonly alignment = 1;
  readonly capabilities: DeviceCapabilities = { discard: false, writeZeroes: false, extents: true, resize: false };
  readonly #cache = new Map<number, Cached>();
  #closed = false;
  /** Chunks fetched from the store (for tests and reports). */
  fetchedChunks = 0;

  constructor(
    private readonly repo: Repository,
    readonly manifest: BackupManifest,
    private readonly cacheChunks = 64,
  ) {}

  get size(): number {
    return this.manifest.source.size;
  }

  #chunkLength(i: number): number {
    const m = this.manifest;
    return Math.min(m.source.size, (i + 1) * m.chunkSize) - i * m.chunkSize;
  }

  #chunk(i: number): Cached {
    let c = this.#cache.get(i);
    if (!c) {
      const id = this.manifest.chunks[i];
      const plain = id === null || id === undefined ? Promise.resolve(null) : this.repo.getChunk(id);
      if (id) this.fetchedChunks++;
      c = { plain, unread: this.#chunkLength(i) };
      plain.catch(() => undefined);
      this.#cache.set(i, c);
      // Oldest first (a Map keeps insertion order).
      while (this.#cache.size > this.cacheChunks) this.#cache.delete(this.#cache.keys().next().value!);
    }
    return c;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    if (this.#closed) throw new OutOfRangeError('The backup device is closed.');
    if (!rangeInside(offset, buf.length, this.size)) throw new OutOfRangeError(`Read of ${buf.length} bytes at ${offset} is outside the backup's ${this.size} bytes.`);
    const cs = this.manifest.chunkSize;
    const end = offset + buf.length;
    const parts: Array<Promise<void>> = [];
    for (let i = Math.floor(offset / cs); i * cs < end; i++) {
      const from = Math.max(offset, i * cs);
      const to = Math.min(end, (i + 1) * cs);
      const c = this.#chunk(i);
      c.unread -= to - from;
      if (c.unread <= 0) this.#cache.delete(i);
      parts.push(
        c.plain.then((plain) => {
          const dst = buf.subarray(from - offset, to - offset);
          if (plain === null) dst.fill(0);
          else dst.set(plain.subarray(from - i * cs, to - i * cs));
        }),
      );
    }
    await Promise.all(parts);
  }

  async write(): Promise<void> {
    throw new ReadOnlyDeviceError('A backup is read-only.');
  }

  async flush(): Promise<void> {}

  async writeZeroes(): Promise<void> {
    throw new ReadOnlyDeviceError('A backup is read-only.');
  }

  async discard(): Promise<void> {
    throw new ReadOnlyDeviceError('A backup is read-only.');
  }

  /** Zero chunks and recorded holes are holes that read as zeros; everything else is data. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    if (!rangeInside(offset, length, this.size)) throw new OutOfRangeError(`Extents of ${length} bytes at ${offset} are outside the backup.`);
    const m = this.manifest;
    const out: Extent[] = [];
    const push = (o: number, n: number, hole: boolean) => {
      if (n <= 0) return;
      const last = out[out.length - 1];
      if (last && last.hole === hole && last.offset + last.length === o) last.length += n;
      else out.push({ offset: o, length: n, hole, zero: hole });
    };
    const end = offset + length;
    for (let i = Math.floor(offset / m.chunkSize); i * m.chunkSize < end; i++) {
      const from = Math.max(offset, i * m.chunkSize);
      const to = Math.min(end, (i + 1) * m.chunkSize);
      if (m.chunks[i] === null) {
        push(from, to - from, true);
        continue;
      }
      let pos = from;
      for (const [ho, hn] of m.holes) {
        if (ho + hn <= pos) continue;
        if (ho >= to) break;
        if (ho > pos) push(pos, ho - pos, false);
        const he = Math.min(to, ho + hn);
        push(Math.max(pos, ho), he - Math.max(pos, ho), true);
        pos = he;
      }
      push(pos, to - pos, false);
    }
    return out;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#cache.clear();
  }
}
