import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../../src/errors.js';
import { parseEncryption } from '../../src/crypto/cipher-spec.js';
import { createSectorCipher } from '../../src/crypto/sector-cipher.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/tools.js';

const params = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512 };

for (const workers of [2, 0]) {
  test(`runShared works in place on shared memory, in any part of it (${workers} workers)`, async () => {
    const key = randomBytes(64);
    const reference = createSectorCipher(parseEncryption(params.encryption, 64), key, 512);
    const pool = CryptoPool.create(workers);
    try {
      const id = pool.addCipher(params, key);
      const shared = new Uint8Array(new SharedArrayBuffer(1 << 20));
      shared.set(randomBytes(shared.length));
      const plain = Buffer.from(shared);
      // Two jobs on disjoint halves at once, the second at an offset into the buffer.
      const half = shared.length / 2;
      await Promise.all([
        pool.runShared(shared.subarray(0, half), { length: half, zeroBlock: 0, encrypt: { cipher: id, iv: 0, length: half } }),
        pool.runShared(shared.subarray(half), { length: half, zeroBlock: 0, encrypt: { cipher: id, iv: half / 512, length: half } }),
      ]);
      const expected = new Uint8Array(plain);
      reference.encrypt(expected, 0);
      assert.ok(Buffer.from(shared).equals(expected), 'the caller sees the workers\' result in its own memory');
      // Zero detection reports back even though no buffer travels.
      const zeros = new Uint8Array(new SharedArrayBuffer(8192));
      const r = await pool.runShared(zeros, { length: 8192, zeroBlock: 4096 });
      assert.equal(r.allZero, true);
    } finally {
      await pool.close();
    }
  });
}

test('runShared refuses memory that is not shared, and jobs longer than their memory', async () => {
  const pool = CryptoPool.create(1);
  try {
    const id = pool.addCipher(params, randomBytes(64));
    await assert.rejects(pool.runShared(new Uint8Array(512), { length: 512, zeroBlock: 0, decrypt: { cipher: id, iv: 0, length: 512 } }), InvalidArgumentError);
    const small = new Uint8Array(new SharedArrayBuffer(512));
    await assert.rejects(pool.runShared(small, { length: 1024, zeroBlock: 0, decrypt: { cipher: id, iv: 0, length: 1024 } }), InvalidArgumentError);
    // A worker-side failure (unknown cipher) comes back as an error, not a hang.
    await assert.rejects(pool.runShared(small, { length: 512, zeroBlock: 0, decrypt: { cipher: 999, iv: 0, length: 512 } }), /not registered/);
  } finally {
    await pool.close();
  }
});

test('a server leaves a core to its main thread; never fewer than one worker, never more than four', async () => {
  const { availableParallelism } = await import('node:os');
  const { defaultWorkerCount, serverWorkerCount } = await import('../../src/workflows/worker-pool.js');
  const cores = availableParallelism();
  for (const n of [defaultWorkerCount(), serverWorkerCount()]) assert.ok(n >= 1 && n <= 4, String(n));
  if (cores >= 2) assert.ok(serverWorkerCount() <= cores - 1, `${serverWorkerCount()} workers on ${cores} cores`);
  assert.ok(serverWorkerCount() <= defaultWorkerCount());
});

for (const workers of [1, 0]) {
  test(`runShared with file I/O: a write lands in the file at the position, a read comes back (zeros past EOF), a bad descriptor rejects with its errno (${workers} workers)`, async () => {
    const { dir, cleanup } = tempDir('brickcrypt-pool-write-');
    const key = randomBytes(64);
    const reference = createSectorCipher(parseEncryption(params.encryption, 64), key, 512);
    const pool = CryptoPool.create(workers);
    const path = join(dir, 'out');
    const fd = openSync(path, 'w+');
    try {
      const id = pool.addCipher(params, key);
      const shared = new Uint8Array(new SharedArrayBuffer(3 * 65536));
      shared.set(randomBytes(shared.length));
      const plainHalf = Buffer.from(shared.subarray(65536, 2 * 65536));
      const expected = new Uint8Array(plainHalf);
      reference.encrypt(expected, 128);
      const view = shared.subarray(65536, 2 * 65536);
      await pool.runShared(view, { length: view.length, zeroBlock: 0, encrypt: { cipher: id, iv: 128, length: view.length } }, { access: 'write', fd, position: 1000 });
      const file = readFileSync(path);
      assert.equal(file.length, 1000 + 65536);
      assert.ok(file.subarray(1000).equals(expected), 'the ciphertext, at the position asked for');
      assert.ok(Buffer.from(view).equals(expected), 'and in the caller\'s memory');
      // Read back and decrypt in one job; the part past the end of the file reads as zeros.
      const again = new Uint8Array(new SharedArrayBuffer(65536 + 512)).fill(9);
      await pool.runShared(again, { length: again.length, zeroBlock: 0 }, { access: 'read', fd, position: 1000 });
      assert.ok(Buffer.from(again.subarray(0, 65536)).equals(expected));
      assert.ok(again.subarray(65536).every((x) => x === 0), 'zeros past the end of the file');
      await pool.runShared(again, { length: 65536, zeroBlock: 0, decrypt: { cipher: id, iv: 128, length: 65536 } }, { access: 'read', fd, position: 1000 });
      assert.ok(Buffer.from(again.subarray(0, 65536)).equals(plainHalf), 'read and decrypted');
      for (const access of ['read', 'write'] as const) {
        await assert.rejects(
          pool.runShared(view, { length: view.length, zeroBlock: 0 }, { access, fd: 1 << 30, position: 0 }),
          (err: NodeJS.ErrnoException) => err.code === 'EBADF',
        );
      }
    } finally {
      closeSync(fd);
      await pool.close();
      cleanup();
    }
  });
}
