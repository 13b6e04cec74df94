/** Crypto jobs that do their own file I/O (worker-pool.ts): synchronous pread/pwrite of a whole buffer around the job. */
import { readSync, writeSync } from 'node:fs';
import { runChunkJob, type CipherTable, type ChunkJob, type ChunkResult } from './chunk-transform.js';

/** File I/O a shared job does itself: before the job ('read') or after it ('write'). */
export interface JobIo {
  access: 'read' | 'write';
  fd: number;
  position: number;
}

/** pwrite until every byte is written (a short write is not an error). */
function writeAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
}

/** pread until `data` is full; bytes past the end of the file read as zeros (as FileDevice.read). */
function readAll(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) {
    const n = readSync(fd, data, done, data.length - done, position + done);
    if (n === 0) {
      data.fill(0, done);
      return;
    }
    done += n;
  }
}

/** Runs `job` on `view` with the file I/O `io` asks for around it. */
export function runJobWithIo(table: CipherTable, view: Uint8Array, job: ChunkJob, io?: JobIo): ChunkResult {
  if (io?.access === 'read') readAll(io.fd, view, io.position);
  const result = runChunkJob(table, view, job);
  if (io?.access === 'write') writeAll(io.fd, view, io.position);
  return result;
}
