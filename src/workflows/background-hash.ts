/**
 * A hash (sha512 for Glance's os_hash_value) computed on a worker thread while the data goes
 * on: the thread that streams an upload does not stop for it. Chunks must live in shared
 * memory and stay unchanged until hashed (an upload's queued copies do).
 *
 * @example
 * const hash = BackgroundHash.start('sha512');
 * hash.update(sharedChunk); await hash.below(64 << 20);
 * const hex = await hash.digest();
 */
import { Worker } from 'node:worker_threads';
import { DeviceIoError } from '../errors.js';
import type { HashReply, HashRequest } from './hash-worker.js';

export class BackgroundHash {
  readonly #worker: Worker;
  /** Bytes sent and not hashed yet. */
  #pending = 0;
  #waiters: Array<{ limit: number; resolve: () => void }> = [];
  #digest: ((hex: string) => void) | undefined;
  #failed: Error | undefined;

  private constructor(algorithm: string) {
    this.#worker = new Worker(new URL('./hash-worker.js', import.meta.url), { workerData: { algorithm } });
    this.#worker.unref();
    this.#worker.on('message', (msg: HashReply) => {
      if (msg.type === 'hashed') {
        this.#pending -= msg.length;
        this.#waiters = this.#waiters.filter((w) => (this.#pending <= w.limit ? (w.resolve(), false) : true));
      } else this.#digest?.(msg.hex);
    });
    this.#worker.on('error', (err) => {
      this.#failed = new DeviceIoError(`hash worker failed: ${err.message}`, { cause: err });
      for (const w of this.#waiters) w.resolve();
      this.#waiters = [];
    });
  }

  static start(algorithm: string): BackgroundHash {
    return new BackgroundHash(algorithm);
  }

  /** Queues `chunk` (a view of a SharedArrayBuffer, not changed afterwards). */
  update(chunk: Uint8Array): void {
    if (this.#failed) throw this.#failed;
    if (!(chunk.buffer instanceof SharedArrayBuffer)) throw new TypeError('BackgroundHash takes chunks of shared memory.');
    this.#pending += chunk.length;
    this.#worker.postMessage({ type: 'chunk', shared: chunk.buffer, offset: chunk.byteOffset, length: chunk.length } satisfies HashRequest);
  }

  /** Resolves once at most `limit` bytes wait to be hashed (back-pressure). */
  below(limit: number): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#pending <= limit) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ limit, resolve }));
  }

  /** The hex digest of every chunk given; ends the worker. */
  async digest(): Promise<string> {
    if (this.#failed) throw this.#failed;
    const hex = await new Promise<string>((resolve) => {
      this.#digest = resolve;
      this.#worker.postMessage({ type: 'digest' } satisfies HashRequest);
    });
    await this.close();
    return hex;
  }

  async close(): Promise<void> {
    await this.#worker.terminate();
  }
}
