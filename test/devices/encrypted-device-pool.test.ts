import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { EncryptedDevice, type EncryptionParams, type SectorCryptoOffload } from '../../src/devices/encrypted-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { tempDir } from '../helpers/tools.js';
import { join } from 'node:path';
import { VolumeKey } from '../../src/secret.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';

/** Deterministic PRNG so a failure can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0;
    return s / 2 ** 32;
  };
}

const THRESHOLD = 64 * 1024;

/** Counts the calls that reach the offload, so the test knows both paths ran. */
function counting(inner: Required<SectorCryptoOffload>): Required<SectorCryptoOffload> & { calls: number; memory: ArrayBufferLike[]; closed: boolean } {
  const o = {
    calls: 0,
    /** The memory each job ran on: the caller's own buffer, or the device's scratch. */
    memory: [] as ArrayBufferLike[],
    closed: false,
    encryptInPlace: (d: Uint8Array, iv: number) => (o.calls++, o.memory.push(d.buffer), inner.encryptInPlace(d, iv)),
    decryptInPlace: (d: Uint8Array, iv: number) => (o.calls++, o.memory.push(d.buffer), inner.decryptInPlace(d, iv)),
    encryptAndWrite: (d: Uint8Array, iv: number, fd: number, position: number) => (o.calls++, o.memory.push(d.buffer), inner.encryptAndWrite(d, iv, fd, position)),
    readAndDecrypt: (d: Uint8Array, iv: number, fd: number, position: number) => (o.calls++, o.memory.push(d.buffer), inner.readAndDecrypt(d, iv, fd, position)),
    close: async () => {
      o.closed = true;
      await inner.close();
    },
  };
  return o;
}

for (const [sectorSize, ivTweak, workers] of [
  [512, 0, 2],
  [4096, 7, 2],
  [512, 3, 0], // pool of size 0: the same jobs inline
] as const) {
  test(`pooled and inline paths agree (sector ${sectorSize}, iv_tweak ${ivTweak}, ${workers} workers)`, async () => {
    const payload = 1024 * 1024 + 3 * 4096;
    const dataOffset = 4096;
    const key = randomBytes(64);
    const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize, ivTweak, dataOffset, payloadSize: payload };
    const pool = CryptoPool.create(workers);
    const offload = counting(pool.sectorCrypto({ encryption: params.encryption, keyBytes: 64, sectorSize }, key));
    const inlineData = new MemoryDevice(dataOffset + payload);
    const pooledData = new MemoryDevice(dataOffset + payload);
    const inline = EncryptedDevice.open(inlineData, params, VolumeKey.copyOf(key));
    const pooled = EncryptedDevice.open(pooledData, params, VolumeKey.copyOf(key), { cryptoOffload: offload, offloadMinBytes: THRESHOLD });
    try {
      const rnd = prng(sectorSize + ivTweak * 31 + workers);
      const shadow = new Uint8Array(payload);
      // Never-written sectors decrypt to noise: start from encrypted zeros (written inline, compared below).
      await inline.writeZeroes(0, payload);
      const zeros = new Uint8Array(dataOffset + payload);
      await inlineData.read(zeros, 0);
      await pooledData.write(zeros, 0);
      // Lengths on both sides of the threshold, unaligned offsets; some writes run concurrently.
      for (let round = 0; round < 40; round++) {
        const batch: Array<Promise<void>> = [];
        const spans: Array<[number, number]> = [];
        for (let j = 0; j < 3; j++) {
          const len = 1 + Math.floor(rnd() * (rnd() < 0.5 ? THRESHOLD : 3 * THRESHOLD));
          const off = Math.floor(rnd() * (payload - len));
          // Concurrent writes must not overlap, or their order would decide the result.
          if (spans.some(([a, b]) => off < b && a < off + len)) continue;
          spans.push([off, off + len]);
          const buf = randomBytes(len);
          shadow.set(buf, off);
          batch.push(inline.write(new Uint8Array(buf), off), pooled.write(new Uint8Array(buf), off));
        }
        await Promise.all(batch);
        const len = 1 + Math.floor(rnd() * 3 * THRESHOLD);
        const off = Math.floor(rnd() * (payload - len));
        const a = new Uint8Array(len);
        // Every other read lands in shared memory (the NBD server's buffers): decrypted in place when aligned.
        const b = round % 2 ? new Uint8Array(new SharedArrayBuffer(len)) : new Uint8Array(len);
        await Promise.all([inline.read(a, off), pooled.read(b, off)]);
        assert.deepEqual(b, a, `read ${off}+${len}`);
        assert.deepEqual(b, shadow.subarray(off, off + len), `read ${off}+${len} vs written`);
      }
      // Zeroing goes through the same write path.
      await Promise.all([inline.writeZeroes(1000, 200_000), pooled.writeZeroes(1000, 200_000)]);
      // Same ciphertext on disk, byte for byte.
      const ca = new Uint8Array(dataOffset + payload);
      const cb = new Uint8Array(dataOffset + payload);
      await inlineData.read(ca, 0);
      await pooledData.read(cb, 0);
      assert.ok(Buffer.from(ca).equals(Buffer.from(cb)), 'ciphertext differs');
      // A whole-device read from the pooled view matches the inline one.
      const all = new Uint8Array(payload);
      const allInline = new Uint8Array(payload);
      await pooled.read(all, 0);
      await inline.read(allInline, 0);
      assert.ok(Buffer.from(all).equals(Buffer.from(allInline)));
      assert.ok(offload.calls > 10, `offload used ${offload.calls} times`);
      // Aligned reads into shared memory, larger than one piece: decrypted in place, piece by piece.
      const before = offload.calls;
      const shared = new Uint8Array(new SharedArrayBuffer(payload - 4096));
      await pooled.read(shared, 4096);
      assert.ok(Buffer.from(shared).equals(Buffer.from(allInline.subarray(4096))), 'in-place read differs');
      assert.equal(offload.calls - before, 2, 'one in-place job per 1 MiB piece');
      assert.ok(offload.memory.slice(before).every((m) => m === shared.buffer), 'decrypted in the caller\'s own memory');
    } finally {
      await inline.close();
      await pooled.close();
      await pool.close();
    }
    assert.equal(offload.closed, true, 'closing the device closes the offload');
  });
}

test('writeConsuming encrypts a shared buffer in place and writes what write() writes; other buffers fall back', async () => {
  const key = randomBytes(64);
  const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512, ivTweak: 0, dataOffset: 4096, payloadSize: 4 << 20 };
  const pool = CryptoPool.create(1);
  const offload = counting(pool.sectorCrypto({ encryption: params.encryption, keyBytes: 64, sectorSize: 512 }, key));
  const viaWrite = new MemoryDevice(4096 + (4 << 20));
  const viaConsume = new MemoryDevice(4096 + (4 << 20));
  const a = EncryptedDevice.open(viaWrite, params, VolumeKey.copyOf(key));
  const b = EncryptedDevice.open(viaConsume, params, VolumeKey.copyOf(key), { cryptoOffload: offload, offloadMinBytes: THRESHOLD });
  try {
    const plain = randomBytes((2 << 20) + 512 * 3); // more than one 1 MiB piece
    const shared = new Uint8Array(new SharedArrayBuffer(plain.length));
    shared.set(plain);
    await a.write(new Uint8Array(plain), 8192);
    await b.writeConsuming(shared, 8192);
    assert.ok(Buffer.from(viaWrite.bytes).equals(Buffer.from(viaConsume.bytes)), 'same ciphertext on disk');
    assert.ok(Buffer.from(shared).equals(Buffer.from(viaConsume.bytes.subarray(4096 + 8192, 4096 + 8192 + plain.length))), 'the buffer now holds the ciphertext');
    assert.equal(offload.calls, 3, 'one in-place job per 1 MiB piece');
    assert.ok(offload.memory.every((m) => m === shared.buffer), 'encrypted in the caller\'s own memory');
    // Unaligned, or not shared: the ordinary write path, and the caller's bytes are left alone.
    const odd = new Uint8Array(randomBytes(THRESHOLD * 2));
    const oddCopy = Buffer.from(odd);
    await a.write(odd.slice(), (3 << 20) + 1000);
    await b.writeConsuming(odd, (3 << 20) + 1000);
    assert.ok(Buffer.from(odd).equals(oddCopy));
    assert.ok(Buffer.from(viaWrite.bytes).equals(Buffer.from(viaConsume.bytes)));
    const back = new Uint8Array(plain.length);
    await b.read(back, 8192);
    assert.ok(Buffer.from(back).equals(plain));
  } finally {
    await a.close();
    await b.close();
    await pool.close();
  }
});

test('small requests stay inline; the offload is not called below the threshold', async () => {
  const key = randomBytes(64);
  const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512, ivTweak: 0, dataOffset: 0, payloadSize: 1 << 20 };
  const pool = CryptoPool.create(1);
  const offload = counting(pool.sectorCrypto({ encryption: params.encryption, keyBytes: 64, sectorSize: 512 }, key));
  const dev = EncryptedDevice.open(new MemoryDevice(1 << 20), params, VolumeKey.copyOf(key), { cryptoOffload: offload, offloadMinBytes: THRESHOLD });
  try {
    try {
      await dev.write(new Uint8Array(THRESHOLD - 512).fill(1), 0);
      await dev.read(new Uint8Array(THRESHOLD - 600), 5);
      assert.equal(offload.calls, 0);
      await dev.read(new Uint8Array(THRESHOLD), 0);
      assert.equal(offload.calls, 1);
    } finally {
      await dev.close();
    }
    // The device's close dropped the cipher in the workers: a job for it now fails.
    await assert.rejects(offload.decryptInPlace(new Uint8Array(new SharedArrayBuffer(512)), 0));
  } finally {
    await pool.close();
  }
});

for (const workers of [1, 0]) {
  test(`over a file: the worker encrypts and writes, or reads and decrypts, each piece itself; bytes as write()/read() (${workers} workers)`, async () => {
    const { dir, cleanup } = tempDir('brickcrypt-through-');
    const key = randomBytes(64);
    const size = 4096 + (4 << 20);
    const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512, ivTweak: 5, dataOffset: 4096, payloadSize: 4 << 20 };
    const pool = CryptoPool.create(workers);
    const offload = counting(pool.sectorCrypto({ encryption: params.encryption, keyBytes: 64, sectorSize: 512 }, key));
    const fileA = await FileDevice.open(join(dir, 'a'), { create: true, size });
    const fileB = await FileDevice.open(join(dir, 'b'), { create: true, size });
    const direct = { read: 0, write: 0 };
    const directIo = fileB.directIo.bind(fileB);
    fileB.directIo = (access, offset, length, io) => (direct[access]++, directIo(access, offset, length, io));
    const a = EncryptedDevice.open(fileA, params, VolumeKey.copyOf(key));
    const b = EncryptedDevice.open(fileB, params, VolumeKey.copyOf(key), { cryptoOffload: offload, offloadMinBytes: THRESHOLD });
    try {
      const plain = randomBytes((2 << 20) + 512 * 5); // three pieces
      const shared = new Uint8Array(new SharedArrayBuffer(plain.length));
      shared.set(plain);
      await a.write(new Uint8Array(plain), 1 << 20);
      await b.writeConsuming(shared, 1 << 20);
      assert.deepEqual(direct, { read: 0, write: 3 }, 'one direct write per 1 MiB piece');
      assert.equal(offload.calls, 3);
      // A read into shared memory comes back the same way, read and decrypted by the worker.
      const sharedBack = new Uint8Array(new SharedArrayBuffer(plain.length));
      await b.read(sharedBack, 1 << 20);
      assert.ok(Buffer.from(sharedBack).equals(plain));
      assert.deepEqual(direct, { read: 3, write: 3 }, 'one direct read per 1 MiB piece');
      const bytesA = new Uint8Array(size);
      const bytesB = new Uint8Array(size);
      await fileA.read(bytesA, 0);
      await fileB.read(bytesB, 0);
      assert.ok(Buffer.from(bytesA).equals(Buffer.from(bytesB)), 'the same ciphertext in the same place');
      // Zeroing part of it afterwards (encrypted zeros) reads back as zeros, the rest as written.
      await b.writeZeroes(1 << 20, 4096);
      const back = new Uint8Array(8192);
      await b.read(back, 1 << 20);
      assert.ok(back.subarray(0, 4096).every((x) => x === 0));
      assert.ok(Buffer.from(back.subarray(4096)).equals(plain.subarray(4096, 8192)));
    } finally {
      await a.close();
      await b.close();
      await fileA.close();
      await fileB.close();
      await pool.close();
      cleanup();
    }
  });
}
