/**
 * The streaming data pipeline behind convert and verify.
 *
 * A fixed set of large chunk buffers (bounded memory for any volume size) circulates:
 * reads run ahead of the writer, crypto and zero scanning run on the worker pool, and the
 * writer issues writes strictly in ascending offset order (deterministic; keeps a fresh
 * sparse target's hole watermark useful), with up to `writeConcurrency` of them in flight.
 * Every stage overlaps with the others. The buffers are shared memory aligned for O_DIRECT, so
 * workers work on them in place and a file target opened with `bypassCache` writes them
 * straight to the device.
 *
 * Sources and targets are described at the ciphertext level (device + base offset + optional
 * cipher), so a LUKS volume is read and written without going through `EncryptedDevice`'s
 * single-threaded crypto.
 */
import type { BlockDevice } from '../block-device.js';
import { CancelledError } from '../errors.js';
import { allocateAligned } from '../native-addon.js';
import { DIRECT_IO_ALIGNMENT } from '../devices/file-device.js';
import { zeroBlocks, type ChunkJob, type ChunkResult } from './chunk-transform.js';
import type { CryptoPool } from './worker-pool.js';

/** Default chunk: large aligned I/O amortises syscalls and per-job overhead. */
export const DEFAULT_CHUNK_BYTES = 4 << 20;
/** Default number of chunk buffers in circulation (peak buffer memory = chunk * depth). */
export const DEFAULT_DEPTH = 8;
/** Zero-detection granularity for plaintext targets: a file system block. */
export const ZERO_BLOCK = 4096;

/** Plaintext read from a device, optionally decrypted (a LUKS payload). */
export interface PipelineSource {
  device: BlockDevice;
  /** Device offset of plaintext byte 0 (a LUKS data offset). */
  base: number;
  /** Plaintext bytes; reads beyond this return zeros. For encrypted sources a sector multiple. */
  size: number;
  /** Cipher id in the pool, and the volume's IV tweak. */
  decrypt?: { cipher: number; ivTweak: number };
}

/** How a plaintext target treats all-zero blocks. */
export type ZeroPolicy = 'skip' | 'write-zeroes' | 'write';

export interface PipelineTarget {
  device: BlockDevice;
  base: number;
  encrypt?: { cipher: number; ivTweak: number };
  /** Plaintext targets only: 'skip' for a fresh sparse target, 'write-zeroes' for an existing one. */
  zeros: ZeroPolicy;
}

export interface PipelineOptions {
  pool: CryptoPool;
  chunkBytes?: number;
  depth?: number;
  signal?: AbortSignal;
  /** Called after each chunk is written (or compared) with the bytes done so far. */
  onProgress?: (bytes: number) => void;
  /**
   * Start a background flush of the target after every this many bytes (0 = never), so the
   * kernel writes back while the copy goes on and the final flush has little left to do.
   * Only for targets whose flush does not stall writes (files, block devices).
   */
  flushEvery?: number;
  /**
   * Writes in flight at once (default 1). More keep a device busy that completes each write only
   * when it reaches the disk (O_DIRECT). Only for targets that take concurrent writes to
   * disjoint ranges (files, block devices; not the qcow2 writer, which appends).
   */
  writeConcurrency?: number;
}

export interface CopyStats {
  /** Plaintext bytes produced in the target. */
  bytes: number;
  /** Bytes written as data. */
  written: number;
  /** Bytes of zero blocks skipped or zeroed without a data write. */
  zeroBytes: number;
}

/** Concurrent reads allowed: enough to keep the disk busy without queueing writes behind many reads in libuv's pool. */
const READ_CONCURRENCY = 2;

/** A counting semaphore for the read stage. */
class Gate {
  #free: number;
  readonly #waiting: Array<() => void> = [];
  constructor(slots: number) {
    this.#free = slots;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((r) => this.#waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

interface Chunk {
  pos: number;
  len: number;
  /** The chunk's whole buffer (capacity `chunkBytes`); its first `len` bytes carry the data. */
  memory: Uint8Array;
  result: ChunkResult;
}

/** `count` chunk buffers of `bytes` each, in shared memory aligned for O_DIRECT. */
function chunkBuffers(count: number, bytes: number): Uint8Array[] {
  return Array.from({ length: count }, () => allocateAligned(bytes, DIRECT_IO_ALIGNMENT).view);
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new CancelledError();
}

/** Reads (and decrypts, scans, encrypts) one chunk of `source` into `memory`. */
async function loadChunk(
  pool: CryptoPool,
  source: PipelineSource,
  pos: number,
  len: number,
  memory: Uint8Array,
  transform: { zeroBlock: number; encrypt?: { cipher: number; ivTweak: number } },
  gate: Gate,
): Promise<Chunk> {
  const view = memory.subarray(0, len);
  const readLen = Math.max(0, Math.min(pos + len, source.size) - pos);
  let knownZero = readLen === 0;
  if (readLen > 0 && !source.decrypt && source.device.capabilities.extents) {
    const extents = await source.device.extents(source.base + pos, readLen);
    knownZero = extents.every((e) => e.zero);
  }
  if (knownZero) view.fill(0);
  else {
    await gate.run(() => source.device.read(view.subarray(0, readLen), source.base + pos));
    if (readLen < len) view.fill(0, readLen);
  }
  if (knownZero && !transform.encrypt) return { pos, len, memory, result: { allZero: true } };
  const job: ChunkJob = {
    length: len,
    decrypt: source.decrypt && !knownZero ? { cipher: source.decrypt.cipher, iv: pos / 512 + source.decrypt.ivTweak, length: readLen } : undefined,
    zeroBlock: transform.zeroBlock,
    encrypt: transform.encrypt ? { cipher: transform.encrypt.cipher, iv: pos / 512 + transform.encrypt.ivTweak, length: len } : undefined,
  };
  if (!job.decrypt && !job.encrypt) {
    // Zero scan only: cheap enough inline (memcmp), and saves a round trip.
    return { pos, len, memory, result: job.zeroBlock ? zeroBlocks(view, job.zeroBlock) : {} };
  }
  return { pos, len, memory, result: await pool.runShared(view, job) };
}

/** Writes one chunk in place, honouring the zero policy for plaintext targets. */
async function storeChunk(target: PipelineTarget, chunk: Chunk, stats: CopyStats): Promise<void> {
  const { pos, len, result } = chunk;
  const view = chunk.memory.subarray(0, len);
  const dev = target.device;
  const at = target.base + pos;
  if (target.encrypt || target.zeros === 'write') {
    await dev.write(view, at);
    stats.written += len;
    return;
  }
  const zeroRun = async (from: number, to: number) => {
    stats.zeroBytes += to - from;
    if (target.zeros === 'write-zeroes') await dev.writeZeroes(at + from, to - from);
  };
  if (result.allZero) return zeroRun(0, len);
  const flags = result.zeros;
  if (!flags) {
    await dev.write(view, at);
    stats.written += len;
    return;
  }
  let runStart = 0;
  let runZero = flags[0] === 1;
  for (let i = 1; i <= flags.length; i++) {
    const z = i < flags.length ? flags[i] === 1 : !runZero;
    if (i < flags.length && z === runZero) continue;
    const from = runStart * ZERO_BLOCK;
    const to = Math.min(i * ZERO_BLOCK, len);
    if (runZero) await zeroRun(from, to);
    else {
      await dev.write(view.subarray(from, to), at + from);
      stats.written += to - from;
    }
    runStart = i;
    runZero = z;
  }
}

/**
 * Copies `length` plaintext bytes from `source` to `target` (bytes past the source's size are
 * zeros). For an encrypted target, `length` must be a multiple of its sector size.
 *
 * @example
 * const stats = await copyData({ device: src, base: 0, size: src.size }, { device: dst, base: 0, zeros: 'skip' }, src.size, { pool });
 */
export async function copyData(source: PipelineSource, target: PipelineTarget, length: number, options: PipelineOptions): Promise<CopyStats> {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const depth = Math.max(1, options.depth ?? DEFAULT_DEPTH);
  const free = chunkBuffers(Math.min(depth, Math.ceil(length / chunkBytes)), chunkBytes);
  const stats: CopyStats = { bytes: 0, written: 0, zeroBytes: 0 };
  const transform = { zeroBlock: target.encrypt || target.zeros === 'write' ? 0 : ZERO_BLOCK, encrypt: target.encrypt };
  const inflight: Array<Promise<Chunk>> = [];
  const gate = new Gate(READ_CONCURRENCY);
  const flushEvery = options.flushEvery ?? 0;
  const writeConcurrency = Math.max(1, options.writeConcurrency ?? 1);
  // Writes in flight; each settles (never rejects) once its buffer is free again.
  const writing = new Set<Promise<void>>();
  let writeError: unknown;
  let flushing: Promise<void> | undefined;
  let flushError: unknown;
  let flushedAt = 0;
  let next = 0;
  try {
    while (next < length || inflight.length > 0) {
      if (flushError) throw flushError;
      if (writeError) throw writeError;
      checkAbort(options.signal);
      while (next < length && free.length > 0) {
        const len = Math.min(chunkBytes, length - next);
        const p = loadChunk(options.pool, source, next, len, free.pop()!, transform, gate);
        p.catch(() => {}); // awaited in order below; keeps an early failure from being "unhandled"
        inflight.push(p);
        next += len;
      }
      const chunk = await inflight.shift()!;
      checkAbort(options.signal);
      while (writing.size >= writeConcurrency) await Promise.race(writing);
      if (writeError) throw writeError;
      checkAbort(options.signal);
      const stored: Promise<void> = storeChunk(target, chunk, stats).then(
        () => {
          writing.delete(stored);
          stats.bytes += chunk.len;
          free.push(chunk.memory);
          if (flushEvery > 0 && !flushing && stats.bytes - flushedAt >= flushEvery) {
            flushedAt = stats.bytes;
            flushing = target.device.flush().then(
              () => void (flushing = undefined),
              (err) => void ((flushError = err), (flushing = undefined)),
            );
          }
          options.onProgress?.(stats.bytes);
        },
        (err) => {
          writing.delete(stored);
          writeError ??= err;
        },
      );
      writing.add(stored);
      // Without spare buffers the next read has to wait for a write anyway.
      if (free.length === 0 && writing.size > 0) await Promise.race(writing);
    }
    await Promise.all(writing);
    if (writeError) throw writeError;
    await flushing;
    if (flushError) throw flushError;
  } catch (err) {
    await Promise.allSettled([...inflight, ...writing, flushing]);
    throw err;
  }
  return stats;
}

/** Index of the first differing byte of two equal-length arrays, or -1. */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.compare(a, b) === 0) return -1;
  const block = 4096;
  for (let pos = 0; pos < a.length; pos += block) {
    const end = Math.min(pos + block, a.length);
    if (Buffer.compare(a.subarray(pos, end), b.subarray(pos, end)) === 0) continue;
    for (let i = pos; i < end; i++) if (a[i] !== b[i]) return i;
  }
  return -1;
}

/**
 * Compares the plaintext of two sources over `length` bytes (each reads zeros past its size).
 * Returns the offset of the first differing byte, or -1 when equal.
 */
export async function compareData(a: PipelineSource, b: PipelineSource, length: number, options: PipelineOptions): Promise<number> {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const depth = Math.max(1, Math.floor((options.depth ?? DEFAULT_DEPTH) / 2));
  const free = chunkBuffers(2 * Math.min(depth, Math.ceil(length / chunkBytes)), chunkBytes);
  const transform = { zeroBlock: 0 };
  const inflight: Array<Promise<[Chunk, Chunk]>> = [];
  const gate = new Gate(READ_CONCURRENCY);
  let next = 0;
  let done = 0;
  try {
    while (next < length || inflight.length > 0) {
      checkAbort(options.signal);
      while (next < length && free.length >= 2) {
        const len = Math.min(chunkBytes, length - next);
        const p = Promise.all([
          loadChunk(options.pool, a, next, len, free.pop()!, transform, gate),
          loadChunk(options.pool, b, next, len, free.pop()!, transform, gate),
        ]);
        p.catch(() => {});
        inflight.push(p);
        next += len;
      }
      const [ca, cb] = await inflight.shift()!;
      const diff = firstDifference(ca.memory.subarray(0, ca.len), cb.memory.subarray(0, cb.len));
      if (diff >= 0) {
        await Promise.allSettled(inflight);
        return ca.pos + diff;
      }
      free.push(ca.memory, cb.memory);
      done += ca.len;
      options.onProgress?.(done);
    }
  } catch (err) {
    await Promise.allSettled(inflight);
    throw err;
  }
  return -1;
}
