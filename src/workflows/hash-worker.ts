/**
 * Worker-thread side of `BackgroundHash`: hashes chunks of shared memory in the order they
 * arrive and answers with the digest when asked.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

/** `staged`: a `copyIn` staging block, echoed so the sender can reuse it. */
export type HashRequest = { type: 'chunk'; shared: SharedArrayBuffer; offset: number; length: number; staged?: boolean } | { type: 'digest' };
export type HashReply = { type: 'hashed'; length: number; staged?: boolean } | { type: 'digest'; hex: string };

const port = parentPort;
if (port) {
  const hash: Hash = createHash((workerData as { algorithm: string }).algorithm);
  port.on('message', (msg: HashRequest) => {
    if (msg.type === 'chunk') {
      hash.update(new Uint8Array(msg.shared, msg.offset, msg.length));
      port.postMessage({ type: 'hashed', length: msg.length, ...(msg.staged ? { staged: true } : {}) } satisfies HashReply);
    } else port.postMessage({ type: 'digest', hex: hash.digest('hex') } satisfies HashReply);
  });
}
