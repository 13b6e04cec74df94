/**
 * Worker-thread side of `SealPool` (src/backup/seal-pool.ts): hashes, seals and opens chunks in
 * place in shared memory, with the repository's chunk-id and seal subkeys (wiped on stop).
 */
import { createHmac } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { BrickcryptError } from '../errors.js';
import { isAllZero } from '../images/zero-runs.js';
import { SecretBytes } from '../secret.js';
import { openObjectInto, sealObjectInto } from './sealed-object.js';

/**
 * A byte range of shared memory: `buffer` is the number under which that SharedArrayBuffer was
 * registered (`buffer` message) — posting a SharedArrayBuffer costs far more than posting numbers,
 * so each is posted once.
 */
export interface SharedRange {
  buffer: number;
  offset: number;
  length: number;
}

export type SealRequest =
  | { type: 'keys'; chunkId: Uint8Array; seal: Uint8Array }
  | { type: 'buffer'; id: number; sab: SharedArrayBuffer }
  | { type: 'forget'; id: number }
  /** All zeros? Else the chunk id (HMAC). */
  | { type: 'hash'; seq: number; data: SharedRange }
  /** Seal chunk `id` from `data` into `out`. */
  | { type: 'seal'; seq: number; id: string; data: SharedRange; out: SharedRange }
  /** Open sealed chunk `id` from `data` into `out`; with `checkId`, also recompute its id. */
  | { type: 'open'; seq: number; id: string; data: SharedRange; out: SharedRange; checkId: boolean }
  | { type: 'stop' };

export type SealReply =
  | { type: 'done'; seq: number; zero?: boolean; id?: string; length?: number; compressed?: boolean }
  | { type: 'failed'; seq: number; message: string; code?: string };

const buffers = new Map<number, SharedArrayBuffer>();
const view = (r: SharedRange): Uint8Array => new Uint8Array(buffers.get(r.buffer)!, r.offset, r.length);

let chunkIdKey: SecretBytes | undefined;
let sealKey: SecretBytes | undefined;

const chunkIdOf = (plain: Uint8Array): string => createHmac('sha256', chunkIdKey!.expose()).update(plain).digest('hex');

const port = parentPort;
if (port) {
  port.on('message', (msg: SealRequest) => {
    if (msg.type === 'keys') {
      chunkIdKey = SecretBytes.copyOf(msg.chunkId);
      sealKey = SecretBytes.copyOf(msg.seal);
      msg.chunkId.fill(0);
      msg.seal.fill(0);
      return;
    }
    if (msg.type === 'buffer') {
      buffers.set(msg.id, msg.sab);
      return;
    }
    if (msg.type === 'forget') {
      buffers.delete(msg.id);
      return;
    }
    if (msg.type === 'stop') {
      chunkIdKey?.wipe();
      sealKey?.wipe();
      port.close();
      return;
    }
    try {
      if (msg.type === 'hash') {
        const data = view(msg.data);
        if (isAllZero(data)) port.postMessage({ type: 'done', seq: msg.seq, zero: true } satisfies SealReply);
        else port.postMessage({ type: 'done', seq: msg.seq, id: chunkIdOf(data) } satisfies SealReply);
      } else if (msg.type === 'seal') {
        const r = sealObjectInto('chunk', msg.id, view(msg.data), sealKey!, view(msg.out));
        port.postMessage({ type: 'done', seq: msg.seq, length: r.length, compressed: r.compressed } satisfies SealReply);
      } else {
        const out = view(msg.out);
        const n = openObjectInto('chunk', msg.id, view(msg.data), sealKey!, out);
        if (msg.checkId && chunkIdOf(out.subarray(0, n)) !== msg.id) throw Object.assign(new Error(`chunk ${msg.id}: its content does not have this id.`), { code: 'INTEGRITY' });
        port.postMessage({ type: 'done', seq: msg.seq, length: n } satisfies SealReply);
      }
    } catch (err) {
      const code = err instanceof BrickcryptError ? err.code : (err as { code?: string }).code;
      port.postMessage({ type: 'failed', seq: msg.seq, message: (err as Error).message, ...(code ? { code } : {}) } satisfies SealReply);
    }
  });
}
