/**
 * Zero detection for sparse output: raw targets skip writing all-zero runs, qcow2
 * targets leave all-zero clusters unallocated.
 */

const ZEROS = Buffer.alloc(1 << 20);

/**
 * True when every byte of `buf` is zero (memcmp against a zero page, so it runs at
 * memory speed).
 *
 * @example
 *   if (!isAllZero(chunk)) await target.write(chunk, offset);
 */
export function isAllZero(buf: Uint8Array): boolean {
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let at = 0; at < view.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, view.length - at);
    if (!view.subarray(at, at + n).equals(n === ZEROS.length ? ZEROS : ZEROS.subarray(0, n))) return false;
  }
  return true;
}

export interface ZeroRun {
  /** Offset inside the buffer. */
  offset: number;
  length: number;
  zero: boolean;
}

/**
 * Splits `buf` into maximal runs of all-zero and data blocks of `granularity` bytes
 * (the last block may be shorter).
 *
 * @example
 *   for (const run of zeroRuns(chunk, 4096)) if (!run.zero) await out.write(chunk.subarray(run.offset, run.offset + run.length), base + run.offset);
 */
export function zeroRuns(buf: Uint8Array, granularity = 4096): ZeroRun[] {
  if (!Number.isInteger(granularity) || granularity <= 0) throw new RangeError(`granularity ${granularity} must be a positive integer`);
  const runs: ZeroRun[] = [];
  for (let at = 0; at < buf.length; at += granularity) {
    const n = Math.min(granularity, buf.length - at);
    const zero = isAllZero(buf.subarray(at, at + n));
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.length += n;
    else runs.push({ offset: at, length: n, zero });
  }
  return runs;
}
