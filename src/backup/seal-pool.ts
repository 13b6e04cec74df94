/**
 * Worker threads that hash, seal and open backup chunks next to the main thread's I/O: one per
 * core (at most 4). Chunks live in shared memory (`allocateShared`), so nothing is copied to or
 * from a worker; each worker holds the repository's chunk-id and seal subkeys. The main thread
 * reads a chunk into a shared buffer, asks for its id (zero chunks are recognised without hashing),
 * and only for a new chunk asks for it to be sealed into a second shared buffer the store writes
 * from; restore reads a sealed object into shared memory and has it opened (authenticated,
 * decompressed, its id checked) into the buffer the target is written from.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { DeviceIoError, IntegrityError } from '../errors.js';
import { allocateAligned } from '../native-addon.js';
import type { RepositoryKeys } from './repository-keys.js';
import type { SealReply, SealRequest, SharedRange } from './seal-worker.js';

/** Shared memory of `length` bytes starting at a 4096-byte boundary (for O_DIRECT), when the native module can tell. */
export function allocateShared(length: number): Uint8Array {
  return allocateAligned(length, 4096).view;
}


interface Slot {
  worker: Worker;
  busy: number;
  pending: Map<number, { resolve: (r: SealReply & { type: 'done' }) => void; reject: (e: Error) => void }>;
}

export class SealPool {
  readonly #slots: Slot[] = [];
  #seq = 0;
  #closed = false;
  /** Shared buffers posted to every worker once, by number. */
  readonly #buffers = new WeakMap<SharedArrayBuffer, number>();
  #nextBuffer = 1;

  #range(v: Uint8Array): SharedRange {
    const sab = v.buffer;
    if (!(sab instanceof SharedArrayBuffer)) throw new TypeError('SealPool works on shared memory only');
    let id = this.#buffers.get(sab);
    if (id === undefined) {
      id = this.#nextBuffer++;
      this.#buffers.set(sab, id);
      for (const s of this.#slots) s.worker.postMessage({ type: 'buffer', id, sab } satisfies SealRequest);
    }
    return { buffer: id, offset: v.byteOffset, length: v.length };
  }

  private constructor(keys: RepositoryKeys, size: number) {
    const script = new URL('./seal-worker.js', import.meta.url);
    for (let i = 0; i < size; i++) {
      const slot: Slot = { worker: new Worker(script), busy: 0, pending: new Map() };
      slot.worker.on('message', (msg: SealReply) => {
        const p = slot.pending.get(msg.seq);
        if (!p) return;
        slot.pending.delete(msg.seq);
        slot.busy--;
        if (msg.type === 'done') p.resolve(msg);
        else if (msg.code === 'INTEGRITY') p.reject(new IntegrityError(msg.message));
        else p.reject(new DeviceIoError(`seal worker: ${msg.message}`));
      });
      const fail = (err: Error) => {
        for (const p of slot.pending.values()) p.reject(err);
        slot.pending.clear();
      };
      slot.worker.on('error', (err) => fail(new DeviceIoError(`seal worker failed: ${err.message}`, { cause: err })));
      slot.worker.on('exit', (code) => {
        if (!this.#closed) fail(new DeviceIoError(`seal worker exited with code ${code}`));
      });
      // Copies of the subkeys (the message clones them; the worker wipes its copy on stop).
      slot.worker.postMessage({ type: 'keys', chunkId: keys.chunkId.expose().slice(), seal: keys.seal.expose().slice() } satisfies SealRequest);
      this.#slots.push(slot);
    }
  }

  /** One worker per core, at most 4. */
  static create(keys: RepositoryKeys, size = Math.max(1, Math.min(4, availableParallelism()))): SealPool {
    return new SealPool(keys, size);
  }

  get size(): number {
    return this.#slots.length;
  }

  #run(build: (seq: number) => SealRequest): Promise<SealReply & { type: 'done' }> {
    if (this.#closed) return Promise.reject(new DeviceIoError('The seal pool is closed.'));
    let slot = this.#slots[0]!;
    for (const s of this.#slots) if (s.busy < slot.busy) slot = s;
    const seq = ++this.#seq;
    return new Promise((resolve, reject) => {
      slot.pending.set(seq, { resolve, reject });
      slot.busy++;
      slot.worker.postMessage(build(seq));
    });
  }

  /** `{ zero: true }` for an all-zero chunk, else its id. */
  async hash(data: Uint8Array): Promise<{ zero: boolean; id?: string }> {
    const r = await this.#run((seq) => ({ type: 'hash', seq, data: this.#range(data) }));
    return r.zero ? { zero: true } : { zero: false, id: r.id! };
  }

  /** Seals chunk `id` into `out`; returns the object's length. */
  async seal(id: string, data: Uint8Array, out: Uint8Array): Promise<{ length: number; compressed: boolean }> {
    const r = await this.#run((seq) => ({ type: 'seal', seq, id, data: this.#range(data), out: this.#range(out) }));
    return { length: r.length!, compressed: r.compressed === true };
  }

  /**
   * Opens sealed chunk `id` into `out`; returns the plaintext length. IntegrityError on any damage
   * (AES-GCM authenticates the object and its name, the id); `checkId` also recomputes the id.
   */
  async open(id: string, sealed: Uint8Array, out: Uint8Array, checkId = true): Promise<number> {
    return (await this.#run((seq) => ({ type: 'open', seq, id, data: this.#range(sealed), out: this.#range(out), checkId }))).length!;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all(
      this.#slots.map(
        (s) =>
          new Promise<void>((resolve) => {
            s.worker.once('exit', () => resolve());
            s.worker.postMessage({ type: 'stop' } satisfies SealRequest);
          }),
      ),
    );
  }
}
