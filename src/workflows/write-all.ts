/** Synchronous pwrite of a whole buffer, for crypto jobs that write their own result (worker-pool.ts). */
import { writeSync } from 'node:fs';

/** pwrite until every byte is written (a short write is not an error). */
export function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
}
