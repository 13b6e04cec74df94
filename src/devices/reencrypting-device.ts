/**
 * The plaintext view of a LUKS2 volume while it is reencrypted in place: two views of the same
 * data device — forward (re-key, encrypt): the new one for `[0, boundary)`, the old one for
 * `[boundary, size)`; backward (decrypt with a detached header, cryptsetup's direction there):
 * the old one for `[0, boundary)`, the new one (plaintext pass-through) for `[boundary, size)` —
 * and a range lock shared by client requests and held exclusively by the
 * reencryption for its hot zone (from before its checksums or journal are taken until the
 * header says the zone is new). Requests that span the boundary are split; requests into the
 * hot zone wait. The boundary moves only while the zone lock is held, so a request sees one
 * boundary from start to end.
 *
 * A zone whose rewrite failed half way (the header may name it as the hot zone) is fenced:
 * requests into it fail until a later run recovers it.
 *
 * @example
 * const dev = new ReencryptingDevice(oldView);
 * dev.installNew(newView);                 // once the new key is known
 * await dev.enterZone(0, zone);            // waits for client requests in the zone
 * ... rewrite the zone, commit ...
 * dev.leaveZone(0, zone, 'new');           // boundary = zone
 */
import type { BlockDevice, DeviceCapabilities, Extent } from '../block-device.js';
import { rangeInside } from '../block-device.js';
import { DeviceIoError, InvalidArgumentError, OutOfRangeError, ReadOnlyDeviceError } from '../errors.js';

/** Where a zone's data is when its rewrite ends: under the new key, still the old, or unknown (half rewritten). */
export type ZoneOutcome = 'new' | 'old' | 'unknown';

/** Which way the boundary moves: forward from 0 (the new view below it), backward from the end (the new view above it). */
export type ZoneDirection = 'forward' | 'backward';

interface LockEntry {
  start: number;
  end: number;
  exclusive: boolean;
  released: Promise<void>;
}

/**
 * Shared/exclusive byte-range lock, first come first served among conflicting requests: an
 * acquirer waits for every earlier entry (held or waiting) it conflicts with, so a waiting
 * exclusive holder is not starved by a stream of readers, and there are no cycles.
 */
export class SharedRangeLock {
  readonly #entries: LockEntry[] = [];

  async acquire(start: number, end: number, exclusive: boolean): Promise<() => void> {
    const before = this.#entries.filter((e) => e.start < end && start < e.end && (exclusive || e.exclusive)).map((e) => e.released);
    let done!: () => void;
    const entry: LockEntry = { start, end, exclusive, released: new Promise<void>((r) => (done = r)) };
    this.#entries.push(entry);
    const release = (): void => {
      const i = this.#entries.indexOf(entry);
      if (i < 0) return;
      this.#entries.splice(i, 1);
      done();
    };
    if (before.length > 0) await Promise.all(before);
    return release;
  }

  /** Entries held or waiting (for tests and diagnostics). */
  get size(): number {
    return this.#entries.length;
  }
}

export class ReencryptingDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly capabilities: DeviceCapabilities;
  readonly alignment: number;
  #old: BlockDevice | undefined;
  #new: BlockDevice | undefined;
  #boundary: number;
  #direction: ZoneDirection = 'forward';
  #fenced: Array<{ start: number; end: number }> = [];
  #zone: { start: number; end: number; release: () => void } | undefined;
  readonly #lock = new SharedRangeLock();
  #closed = false;

  /**
   * `old`: the view under the old key (owned: closed by `close()`). `options.new` and
   * `options.boundary` describe a reencryption already under way (forward: `[0, boundary)` new;
   * `options.direction` backward: `[boundary, size)` new); `options.fenced`, an interrupted hot
   * zone (at the boundary) that is not served until recovered.
   */
  constructor(old: BlockDevice, options: { new?: BlockDevice; boundary?: number; direction?: ZoneDirection; fenced?: { offset: number; length: number } } = {}) {
    this.size = old.size;
    this.readOnly = old.readOnly;
    this.capabilities = old.capabilities;
    this.alignment = old.alignment;
    this.#old = old;
    this.#direction = options.direction ?? 'forward';
    this.#boundary = options.boundary ?? (this.#direction === 'forward' ? 0 : this.size);
    if (options.new) {
      if (options.new.size !== this.size || options.new.readOnly !== this.readOnly) throw new InvalidArgumentError('The new view does not match the old one.');
      this.#new = options.new;
    }
    if (options.fenced) this.#fenced.push({ start: options.fenced.offset, end: options.fenced.offset + options.fenced.length });
    const someNew = this.#direction === 'forward' ? this.#boundary > 0 : this.#boundary < this.size;
    if (!rangeInside(0, this.#boundary, this.size) || (someNew && !this.#new)) {
      throw new InvalidArgumentError(`Reencryption boundary ${this.#boundary} does not fit the ${this.size}-byte volume or has no new view.`);
    }
  }

  /** Forward: bytes `[0, boundary)` are new; backward: bytes `[boundary, size)` are. */
  get boundary(): number {
    return this.#boundary;
  }

  get direction(): ZoneDirection {
    return this.#direction;
  }

  /** Every byte is served by the new view. */
  get allNew(): boolean {
    return this.#new !== undefined && this.#boundary === (this.#direction === 'forward' ? this.size : 0);
  }

  get hasNewView(): boolean {
    return this.#new !== undefined;
  }

  /**
   * The view under the new key (owned from now on). Its geometry must match the old view's.
   * `direction` (default forward) may change only while nothing is new yet: the boundary is
   * then put where nothing is new in that direction (0 forward, the size backward), which
   * routes every request to the old view exactly as before.
   */
  installNew(view: BlockDevice, direction: ZoneDirection = 'forward'): void {
    if (this.#new) throw new InvalidArgumentError('The reencrypting view already has a new-key view.');
    if (view.size !== this.size) throw new InvalidArgumentError(`The new-key view has ${view.size} bytes, the volume ${this.size}.`);
    if (view.readOnly !== this.readOnly) throw new InvalidArgumentError('The new-key view and the old-key view differ in read-only mode.');
    if (direction !== this.#direction) {
      if (this.#boundary !== (this.#direction === 'forward' ? 0 : this.size)) throw new InvalidArgumentError('The reencryption direction cannot change once part of the volume is new.');
      this.#direction = direction;
      this.#boundary = direction === 'forward' ? 0 : this.size;
    }
    this.#new = view;
  }

  /**
   * Takes the zone `[offset, offset+length)` for the reencryption: waits until no client request
   * is inside it (new ones wait), then flushes, so every write a client completed in the zone is
   * durable before the zone's protection (checksums of its ciphertext) is taken — else a crash
   * could leave an older block on disk whose hash matches nothing, which recovery would take for
   * rewritten. Forward, `offset` must be the boundary; backward, `offset + length` must.
   */
  async enterZone(offset: number, length: number): Promise<void> {
    if (this.#closed) throw new DeviceIoError('reencrypting device is closed');
    if (!this.#new) throw new DeviceIoError('The reencrypting view has no new-key view yet.');
    if (this.#zone) throw new DeviceIoError('A hot zone is already held.');
    const at = this.#direction === 'forward' ? offset : offset + length;
    if (at !== this.#boundary || !rangeInside(offset, length, this.size) || length === 0) {
      throw new DeviceIoError(`The reencryption works on ${offset}+${length}, but the served view's ${this.#direction} boundary is at ${this.#boundary}.`);
    }
    const release = await this.#lock.acquire(offset, offset + length, true);
    this.#zone = { start: offset, end: offset + length, release };
    try {
      await this.#any().flush();
    } catch (err) {
      this.#zone = undefined;
      release();
      throw err;
    }
  }

  /** Releases the hot zone: `new` moves the boundary past it, `unknown` fences it (requests into it fail). */
  leaveZone(offset: number, length: number, outcome: ZoneOutcome): void {
    const z = this.#zone;
    if (!z || z.start !== offset || z.end !== offset + length) throw new DeviceIoError(`The hot zone ${offset}+${length} is not held.`);
    if (outcome === 'new') {
      this.#boundary = this.#direction === 'forward' ? z.end : z.start;
      this.#fenced = this.#fenced.filter((f) => f.end <= z.start || f.start >= z.end);
    } else if (outcome === 'unknown') {
      this.#fenced.push({ start: z.start, end: z.end });
    }
    this.#zone = undefined;
    z.release();
  }

  /**
   * Closes the old-key view (wiping its key) once everything is under the new key; requests
   * then go to the new view only.
   */
  async retireOld(): Promise<void> {
    if (!this.allNew || !this.#old) return;
    const release = await this.#lock.acquire(0, this.size, true);
    try {
      const old = this.#old;
      this.#old = undefined;
      await old.close();
    } finally {
      release();
    }
  }

  /**
   * After a finished reencryption (everything new): closes the old view and makes the new-key
   * view the old one for a next reencryption — the same mapping, so requests in flight are unaffected.
   */
  async restart(): Promise<void> {
    if (!this.allNew) throw new DeviceIoError('Only a finished reencryption can be followed by another one.');
    await this.retireOld();
    this.#old = this.#new;
    this.#new = undefined;
    this.#direction = 'forward';
    this.#boundary = 0;
  }

  #any(): BlockDevice {
    return (this.#old ?? this.#new)!;
  }

  #check(offset: number, length: number, writing: boolean): void {
    if (this.#closed) throw new DeviceIoError('reencrypting device is closed');
    if (writing && this.readOnly) throw new ReadOnlyDeviceError('The device is open read-only.');
    if (!rangeInside(offset, length, this.size)) throw new OutOfRangeError(`range ${offset}+${length} is outside the ${this.size}-byte device`);
  }

  /**
   * Runs `fn` on each part of `[offset, offset+length)` with the view that holds it (`at` is the
   * part's offset, `rel` its offset inside the request), under the shared range lock.
   */
  async #route<T>(offset: number, length: number, writing: boolean, fn: (dev: BlockDevice, at: number, len: number, rel: number) => Promise<T>): Promise<T[]> {
    this.#check(offset, length, writing);
    if (length === 0) return [];
    const end = offset + length;
    const release = await this.#lock.acquire(offset, end, false);
    try {
      if (this.#closed) throw new DeviceIoError('reencrypting device is closed');
      const f = this.#fenced.find((x) => x.start < end && offset < x.end);
      if (f) throw new DeviceIoError(`Bytes ${f.start}+${f.end - f.start} are in a reencryption zone that was interrupted; run \`brickcrypt reencrypt --resume-only\` to recover it.`);
      const b = this.#boundary;
      // Below the boundary: new forward, old backward; above it the other one.
      const [low, high] = this.#direction === 'forward' ? [this.#new, this.#old] : [this.#old, this.#new];
      const jobs: Array<Promise<T>> = [];
      if (offset < b) jobs.push(fn(low!, offset, Math.min(end, b) - offset, 0));
      if (end > b) {
        const at = Math.max(offset, b);
        jobs.push(fn(high!, at, end - at, at - offset));
      }
      return await Promise.all(jobs);
    } finally {
      release();
    }
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await this.#route(offset, buf.length, false, (dev, at, len, rel) => dev.read(buf.subarray(rel, rel + len), at));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    await this.#route(offset, buf.length, true, (dev, at, len, rel) => dev.write(buf.subarray(rel, rel + len), at));
  }

  async writeConsuming(buf: Uint8Array, offset: number): Promise<void> {
    await this.#route(offset, buf.length, true, (dev, at, len, rel) => {
      const part = buf.subarray(rel, rel + len);
      return dev.writeConsuming ? dev.writeConsuming(part, at) : dev.write(part, at);
    });
  }

  async writeZeroes(offset: number, length: number, options?: { mayTrim?: boolean }): Promise<void> {
    await this.#route(offset, length, true, (dev, at, len) => dev.writeZeroes(at, len, options));
  }

  async discard(offset: number, length: number): Promise<void> {
    await this.#route(offset, length, true, (dev, at, len) => dev.discard(at, len));
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const parts = await this.#route(offset, length, false, (dev, at, len) => dev.extents(at, len));
    const out: Extent[] = [];
    for (const e of parts.flat()) {
      const last = out[out.length - 1];
      if (last && last.hole === e.hole && last.zero === e.zero && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ ...e });
    }
    return out;
  }

  /** Both views sit on the same data device: one flush makes every completed write durable. */
  async flush(): Promise<void> {
    if (this.#closed) throw new DeviceIoError('reencrypting device is closed');
    await this.#any().flush();
  }

  /** Closes both views (wiping their keys); the data device stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const views = [this.#old, this.#new].filter((v): v is BlockDevice => v !== undefined);
    this.#old = undefined;
    this.#new = undefined;
    for (const v of views) await v.close();
  }
}
