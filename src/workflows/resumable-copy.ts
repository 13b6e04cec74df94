/**
 * A block copy that can be continued after the process died: it copies `[start, length)` from
 * one `BlockDevice` to another in chunks and, every `commitBytes`, flushes the target and only
 * then calls `commit(offset)`, so a recorded offset always names bytes that are on the target.
 * The flush runs behind the copy (the next chunks are read and written meanwhile), one at a time.
 * Continuing from the last committed offset rewrites at most `commitBytes` that were already
 * written, with the same bytes (the source is read-only while the copy runs).
 *
 * @example
 * await resumableCopy({ source, target, length: source.size, start: checkpoint.offset,
 *   commit: (offset) => db.saveCheckpoint(jobId, { offset }) });
 */
import type { BlockDevice } from '../block-device.js';
import { CancelledError, InvalidArgumentError } from '../errors.js';

export interface ResumableCopyOptions {
  source: BlockDevice;
  target: BlockDevice;
  /** Bytes to copy from offset 0 of both devices. */
  length: number;
  /** Offset to continue from (a previously committed offset; default 0). */
  start?: number;
  /** Bytes per read/write (default 4 MiB; a multiple of 4096 keeps LUKS sectors whole). */
  chunkBytes?: number;
  /** Bytes between commits (default 16 MiB). */
  commitBytes?: number;
  /** Called after the target was flushed: every byte before `offset` is durable there. */
  commit: (offset: number) => void | Promise<void>;
  onProgress?: (offset: number) => void;
  signal?: AbortSignal;
  /** Bytes per second at most (Cinder's volume_copy_bps_limit); 0 or absent: unlimited. */
  bytesPerSecond?: number;
}

/** Copies and returns the bytes copied in this run. */
export async function resumableCopy(o: ResumableCopyOptions): Promise<number> {
  const chunk = o.chunkBytes ?? 4 << 20;
  const commitEvery = o.commitBytes ?? 16 << 20;
  const start = o.start ?? 0;
  if (!Number.isSafeInteger(start) || start < 0 || start > o.length) throw new InvalidArgumentError(`Copy checkpoint ${start} lies outside 0..${o.length}.`);
  if (o.length > o.source.size || o.length > o.target.size) throw new InvalidArgumentError(`A copy of ${o.length} bytes does not fit source ${o.source.size} / target ${o.target.size}.`);
  // Shared memory: an encrypted target or source may hand a chunk to its crypto workers in place.
  // Two buffers: the next chunk is read while the current one is written.
  const bufs = [new Uint8Array(new SharedArrayBuffer(chunk)), new Uint8Array(new SharedArrayBuffer(chunk))];
  const t0 = performance.now();
  const readAt = async (at: number, i: number): Promise<Uint8Array> => {
    const n = Math.min(chunk, o.length - at);
    const view = n === chunk ? bufs[i]! : bufs[i]!.subarray(0, n);
    await o.source.read(view, at);
    return view;
  };
  let offset = start;
  let committed = start;
  let which = 0;
  let flushing: Promise<void> = Promise.resolve();
  let pending: Promise<Uint8Array> | undefined = offset < o.length ? readAt(offset, which) : undefined;
  try {
    while (pending) {
      const view = await pending;
      pending = undefined;
      if (o.signal?.aborted) throw new CancelledError();
      const next = offset + view.length;
      if (next < o.length) {
        pending = readAt(next, 1 - which);
        pending.catch(() => {}); // awaited in the next round, or dropped on an error here
      }
      // The target may use the chunk as scratch (encrypt in place): its bytes are not needed again.
      await (o.target.writeConsuming ? o.target.writeConsuming(view, offset) : o.target.write(view, offset));
      offset = next;
      which = 1 - which;
      o.onProgress?.(offset);
      if (offset - committed >= commitEvery || offset === o.length) {
        // At most one flush in flight: the previous checkpoint is committed before the next
        // flush starts, so checkpoints are committed in order.
        await flushing;
        committed = offset;
        // Every write before `at` has completed, so the flush started now covers them; the copy
        // goes on while the disk catches up, and `commit(at)` runs only once the flush is done.
        const at = offset;
        flushing = o.target.flush().then(() => o.commit(at));
        flushing.catch(() => {}); // awaited at the next checkpoint or at the end
        if (offset === o.length) await flushing;
      }
      if (o.bytesPerSecond && o.bytesPerSecond > 0) {
        // Sleep until this run's average rate is back under the limit.
        const due = ((offset - start) / o.bytesPerSecond) * 1000 - (performance.now() - t0);
        if (due > 0) await sleep(due, o.signal);
      }
    }
  } finally {
    await pending?.catch(() => {});
    await flushing.catch(() => {});
  }
  return offset - start;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
