/**
 * Worker-thread side of `BackgroundHash`: hashes chunks of shared memory in the order they
 * arrive and answers with the digest when asked.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';

export type HashRequest = { type: 'chunk'; shared: SharedArrayBuffer; offset: number; length: number } | { type: 'digest' };
export type HashReply = { type: 'hashed'; length: number } | { type: 'digest'; hex: string };

const port = parentPort;
if (port) {
  const hash: Hash = createHash((workerData as { algorithm: string }).algorithm);
  port.on('message', (msg: HashRequest) => {
    if (msg.type === 'chunk') {
      hash.update(new Uint8Array(msg.shared, msg.offset, msg.length));
      port.postMessage({ type: 'hashed', length: msg.length } satisfies HashReply);
    } else port.postMessage({ type: 'digest', hex: hash.digest('hex') } satisfies HashReply);
  });
}
