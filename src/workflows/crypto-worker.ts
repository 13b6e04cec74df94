/**
 * Worker-thread side of `CryptoPool`: keeps its own cipher table and runs chunk jobs in place
 * on shared memory (never copied).
 */
import { parentPort } from 'node:worker_threads';
import { CipherTable, type ChunkJob, type CipherParams } from './chunk-transform.js';
import { runJobWithIo, type JobIo } from './job-io.js';

export type WorkerRequest =
  | { type: 'key'; id: number; params: CipherParams; key: Uint8Array }
  | { type: 'drop'; id: number }
  | { type: 'stop' }
  /**
   * A job on memory both threads see: nothing is transferred or copied, the worker works in
   * place; with `io`, it first preads the bytes from that file descriptor and position
   * ('read'), or pwrites the result there afterwards ('write').
   */
  | { type: 'shared-job'; seq: number; shared: SharedArrayBuffer; offset: number; job: ChunkJob; io?: JobIo };

export type WorkerReply =
  | { type: 'shared-done'; seq: number; zeros?: Uint8Array; allZero?: boolean }
  /** `code`: the errno name when the job's write failed (ENOSPC, EIO, ...). */
  | { type: 'shared-failed'; seq: number; message: string; code?: string };

const table = new CipherTable();
const port = parentPort;
if (port) {
  port.on('message', (msg: WorkerRequest) => {
    switch (msg.type) {
      case 'key':
        table.add(msg.id, msg.params, msg.key);
        break;
      case 'drop':
        table.drop(msg.id);
        break;
      case 'stop':
        // Wipe the key schedules before the thread ends.
        table.dropAll();
        port.close();
        break;
      case 'shared-job': {
        let reply: WorkerReply;
        try {
          const view = new Uint8Array(msg.shared, msg.offset, msg.job.length);
          const r = runJobWithIo(table, view, msg.job, msg.io);
          reply = { type: 'shared-done', seq: msg.seq, zeros: r.zeros, allZero: r.allZero };
        } catch (err) {
          const code = (err as NodeJS.ErrnoException)?.code;
          reply = { type: 'shared-failed', seq: msg.seq, message: (err as Error)?.message ?? String(err), ...(code ? { code } : {}) };
        }
        port.postMessage(reply);
        break;
      }
    }
  });
  port.on('close', () => table.dropAll());
}
