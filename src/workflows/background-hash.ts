/**
 * A hash (sha512 for Glance's os_hash_value) computed on a worker thread while the data goes
 * on: the thread that streams an upload does not stop for it. Chunks must live in shared
 * memory and stay unchanged until hashed (an upload's queued copies do).
 *
 * @example
 * const hash = BackgroundHash.start('sha512');
 * hash.update(sharedChunk); await hash.below(64 << 20);
 * await hash.copyIn(socketChunk); // any memory: copied into a staging block
 * const hex = await hash.digest();
 */
import { Worker } from 'node:worker_threads';
import { DeviceIoError } from '../errors.js';
import type { HashReply, HashRequest } from './hash-worker.js';

/** Staging blocks for `copyIn`: few large messages instead of one per socket read. */
const STAGE_BYTES = 4 << 20;
const STAGE_BLOCKS = 16;

export class BackgroundHash {
  readonly #worker: Worker;
  /** Staging blocks not in the worker's queue, and the one being filled (with its fill level). */
  readonly #freeBlocks: Uint8Array[] = [];
  #stageBlocks = 0;
  #stage: Uint8Array | undefined;
  #staged = 0;
  /** Blocks handed to the worker, oldest first: each returns to the free list once hashed. */
  readonly #queuedBlocks: Array<{ block: Uint8Array; length: number }> = [];
  #blockWaiter: (() => void) | undefined;
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
        // Replies come in the order the chunks were sent: the oldest staged block is done.
        if (msg.staged) {
          this.#freeBlocks.push(this.#queuedBlocks.shift()!.block);
          const w = this.#blockWaiter;
          this.#blockWaiter = undefined;
          w?.();
        }
        this.#waiters = this.#waiters.filter((w) => (this.#pending <= w.limit ? (w.resolve(), false) : true));
      } else this.#digest?.(msg.hex);
    });
    this.#worker.on('error', (err) => {
      this.#failed = new DeviceIoError(`hash worker failed: ${err.message}`, { cause: err });
      for (const w of this.#waiters) w.resolve();
      this.#waiters = [];
      this.#blockWaiter?.();
    });
  }

  static start(algorithm: string): BackgroundHash {
    return new BackgroundHash(algorithm);
  }

  /** Queues `chunk` (a view of a SharedArrayBuffer, not changed afterwards). */
  update(chunk: Uint8Array): void {
    if (this.#failed) throw this.#failed;
    if (!(chunk.buffer instanceof SharedArrayBuffer)) throw new TypeError('BackgroundHash takes chunks of shared memory.');
    this.#sendStage(); // bytes copied in before this chunk are hashed before it
    this.#pending += chunk.length;
    this.#worker.postMessage({ type: 'chunk', shared: chunk.buffer, offset: chunk.byteOffset, length: chunk.length } satisfies HashRequest);
  }

  /**
   * Queues a copy of `chunk` (any memory, reusable as soon as this returns): the bytes are
   * gathered into large shared staging blocks, so the worker gets a few big messages and the
   * caller allocates nothing per chunk. The promise (only when every block is queued) is the
   * back-pressure: it resolves once the worker frees a block.
   */
  copyIn(chunk: Uint8Array): void | Promise<void> {
    if (this.#failed) throw this.#failed;
    let done = 0;
    while (done < chunk.length) {
      if (!this.#stage) {
        const block = this.#freeBlocks.pop() ?? (this.#stageBlocks < STAGE_BLOCKS ? (this.#stageBlocks++, new Uint8Array(new SharedArrayBuffer(STAGE_BYTES))) : undefined);
        if (!block) return this.#waitBlock().then(() => this.copyIn(chunk.subarray(done)));
        this.#stage = block;
        this.#staged = 0;
      }
      const take = Math.min(chunk.length - done, STAGE_BYTES - this.#staged);
      this.#stage.set(chunk.subarray(done, done + take), this.#staged);
      this.#staged += take;
      done += take;
      if (this.#staged === STAGE_BYTES) this.#sendStage();
    }
  }

  #sendStage(): void {
    const block = this.#stage;
    if (!block || this.#staged === 0) return;
    this.#stage = undefined;
    this.#queuedBlocks.push({ block, length: this.#staged });
    this.#pending += this.#staged;
    this.#worker.postMessage({ type: 'chunk', shared: block.buffer as SharedArrayBuffer, offset: 0, length: this.#staged, staged: true } satisfies HashRequest);
  }

  #waitBlock(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#blockWaiter = () => (this.#failed ? reject(this.#failed) : resolve());
    });
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
    this.#sendStage();
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
