/**
 * A small pool of worker threads for the pipeline's crypto and zero scanning.
 *
 * Jobs work in place on shared memory (nothing is copied or transferred). Every worker holds
 * every registered cipher, so any chunk can go to the least busy worker; the pipeline keeps
 * write order itself, so results may complete out of order. With `size` 0 jobs run inline.
 *
 * @example
 * const pool = CryptoPool.create(2);
 * const id = pool.addCipher({ encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512 }, key.expose());
 * const buf = new Uint8Array(new SharedArrayBuffer(1 << 20));
 * await pool.runShared(buf, { length: buf.length, zeroBlock: 0, encrypt: { cipher: id, iv: 0, length: buf.length } });
 * await pool.close();
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { DeviceIoError, InvalidArgumentError } from '../errors.js';
import { CipherTable, type ChunkJob, type ChunkResult, type CipherParams } from './chunk-transform.js';
import type { WorkerReply, WorkerRequest } from './crypto-worker.js';
import { runJobWithIo, type JobIo } from './job-io.js';
import type { SectorCryptoOffload } from '../devices/encrypted-device.js';

interface Pending {
  resolve: (r: ChunkResult) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: number;
  pending: Map<number, Pending>;
  failed?: Error;
}

/** Worker threads to use by default: one per core, at most 4 (the main thread does the I/O). */
export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

/**
 * Worker threads for a server (the NBD export): one core stays with the main thread, whose
 * protocol and socket work is the larger part per request once the cipher runs at AES-NI speed
 * (on 2 cores, 1 worker read 2 GiB in 1.80 s on average against 1.93 s with 2, docs/attach.md).
 */
export function serverWorkerCount(): number {
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

export class CryptoPool {
  readonly #slots: Slot[] = [];
  readonly #local = new CipherTable();
  #nextCipher = 1;
  #seq = 0;
  #closed = false;

  private constructor(readonly size: number) {
    const script = new URL('./crypto-worker.js', import.meta.url);
    for (let i = 0; i < size; i++) {
      const slot: Slot = { worker: new Worker(script), busy: 0, pending: new Map() };
      slot.worker.on('message', (msg: WorkerReply) => {
        const p = slot.pending.get(msg.seq);
        if (!p) return;
        slot.pending.delete(msg.seq);
        slot.busy--;
        if (msg.type === 'shared-done') p.resolve({ zeros: msg.zeros, allZero: msg.allZero });
        else if (msg.code) p.reject(Object.assign(new Error(msg.message), { code: msg.code }));
        else p.reject(new DeviceIoError(`crypto worker: ${msg.message}`));
      });
      const fail = (err: Error) => {
        slot.failed = err;
        for (const p of slot.pending.values()) p.reject(err);
        slot.pending.clear();
      };
      slot.worker.on('error', (err) => fail(new DeviceIoError(`crypto worker failed: ${err.message}`, { cause: err })));
      slot.worker.on('exit', (code) => {
        if (!this.#closed) fail(new DeviceIoError(`crypto worker exited with code ${code}`));
      });
      this.#slots.push(slot);
    }
  }

  /** A pool of `size` workers (0: everything runs on the calling thread). */
  static create(size = defaultWorkerCount()): CryptoPool {
    return new CryptoPool(size);
  }

  /**
   * Keys a cipher in every worker; returns its id for jobs. The key is validated here first
   * (typed errors such as WeakKeyError come from this call); `key` is copied, not kept.
   */
  addCipher(params: CipherParams, key: Uint8Array): number {
    const id = this.#nextCipher++;
    this.#local.add(id, params, new Uint8Array(key));
    for (const slot of this.#slots) {
      const copy = new Uint8Array(key);
      slot.worker.postMessage({ type: 'key', id, params, key: copy } satisfies WorkerRequest, [copy.buffer]);
    }
    return id;
  }

  dropCipher(id: number): void {
    this.#local.drop(id);
    for (const slot of this.#slots) slot.worker.postMessage({ type: 'drop', id } satisfies WorkerRequest);
  }

  /**
   * One cipher of this pool as an `EncryptedDevice` offload: every call is one job on the least
   * busy worker. Its `close()` wipes the cipher in every worker (the pool stays up).
   */
  sectorCrypto(params: CipherParams, key: Uint8Array): Required<SectorCryptoOffload> {
    const id = this.addCipher(params, key);
    const inPlace = async (data: Uint8Array, iv: number, dir: 'encrypt' | 'decrypt', io?: JobIo): Promise<void> => {
      await this.runShared(data, { length: data.length, zeroBlock: 0, [dir]: { cipher: id, iv, length: data.length } }, io);
    };
    let dropped = false;
    return {
      encryptInPlace: (data, iv) => inPlace(data, iv, 'encrypt'),
      decryptInPlace: (data, iv) => inPlace(data, iv, 'decrypt'),
      encryptAndWrite: (data, iv, fd, position) => inPlace(data, iv, 'encrypt', { access: 'write', fd, position }),
      readAndDecrypt: (data, iv, fd, position) => inPlace(data, iv, 'decrypt', { access: 'read', fd, position }),
      close: async () => {
        if (dropped || this.#closed) return;
        dropped = true;
        this.dropCipher(id);
      },
    };
  }

  /**
   * Runs `job` in place on `view`, which must lie in a SharedArrayBuffer: the worker works on
   * the same memory, so nothing is copied or transferred and `view` stays usable. The caller
   * must not touch those bytes until the promise settles. With `io`, the worker first reads the
   * job's bytes from that file descriptor and position, or writes them there afterwards (a
   * failed read or write rejects with an error carrying its errno `code`); the caller keeps the
   * descriptor open until then.
   */
  async runShared(view: Uint8Array, job: ChunkJob, io?: JobIo): Promise<ChunkResult> {
    if (!(view.buffer instanceof SharedArrayBuffer)) throw new InvalidArgumentError('runShared needs memory in a SharedArrayBuffer.');
    if (job.length > view.length) throw new InvalidArgumentError('The job is longer than its memory.');
    const shared = view.buffer;
    return this.#dispatch(
      () => runJobWithIo(this.#local, view.subarray(0, job.length), job, io),
      (seq) => ({ type: 'shared-job', seq, shared, offset: view.byteOffset, job, ...(io ? { io } : {}) }),
    );
  }

  #dispatch(inline: () => ChunkResult, message: (seq: number) => WorkerRequest): Promise<ChunkResult> {
    if (this.#closed) return Promise.reject(new DeviceIoError('crypto pool is closed'));
    if (this.#slots.length === 0) {
      try {
        return Promise.resolve(inline());
      } catch (err) {
        return Promise.reject(err);
      }
    }
    const live = this.#slots.filter((s) => !s.failed);
    if (live.length === 0) return Promise.reject(this.#slots[0]!.failed!);
    let slot = live[0]!;
    for (const s of live) if (s.busy < slot.busy) slot = s;
    const seq = this.#seq++;
    slot.busy++;
    return new Promise((resolve, reject) => {
      slot.pending.set(seq, { resolve, reject });
      slot.worker.postMessage(message(seq));
    });
  }

  /** Wipes every key and stops the workers. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#local.dropAll();
    await Promise.all(
      this.#slots.map(async (s) => {
        if (s.failed) return void (await s.worker.terminate());
        const exited = new Promise<void>((r) => s.worker.once('exit', () => r()));
        s.worker.postMessage({ type: 'stop' } satisfies WorkerRequest);
        const timer = setTimeout(() => void s.worker.terminate(), 2000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
