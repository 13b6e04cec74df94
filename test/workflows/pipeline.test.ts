import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { compareData, copyData } from '../../src/workflows/pipeline.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';
import { CancelledError, DeviceIoError, WeakKeyError } from '../../src/errors.js';
import { tempDir } from '../helpers/tools.js';
import { isAddressAligned, nativeAddon } from '../../src/native-addon.js';

const pool = CryptoPool.create(2);
const inline = CryptoPool.create(0);
after(async () => {
  await pool.close();
  await inline.close();
});

/** Independent per-sector AES-XTS with IV = u64LE(pos/512 + tweak). */
function xts(decrypt: boolean, data: Uint8Array, key: Uint8Array, sectorSize: number, ivTweak: number): Uint8Array {
  const out = new Uint8Array(data.length);
  for (let pos = 0; pos < data.length; pos += sectorSize) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(pos / 512 + ivTweak));
    const c = (decrypt ? createDecipheriv : createCipheriv)('aes-256-xts', key, iv).setAutoPadding(false);
    out.set(Buffer.concat([c.update(data.subarray(pos, pos + sectorSize)), c.final()]), pos);
  }
  return out;
}

/** Random data with zero runs of various sizes and alignments. */
function sample(size: number): Uint8Array {
  const b = new Uint8Array(randomBytes(size));
  b.fill(0, 4096 * 3, 4096 * 40); // aligned zero run
  b.fill(0, 300000, 300000 + 70000); // unaligned zero run
  b.fill(0, size - 9000); // zero tail
  return b;
}

for (const [name, p] of [
  ['workers', () => pool],
  ['inline', () => inline],
] as const) {
  test(`plaintext copy skips zero blocks and keeps bytes (${name})`, async () => {
    const data = sample(3_000_001);
    const src = new MemoryDevice(data);
    const dst = new MemoryDevice(data.length);
    const stats = await copyData({ device: src, base: 0, size: src.size }, { device: dst, base: 0, zeros: 'skip' }, src.size, {
      pool: p(),
      chunkBytes: 1 << 20,
      depth: 3,
    });
    assert.deepEqual(Buffer.from(dst.bytes), Buffer.from(data));
    assert.equal(stats.bytes, data.length);
    assert.equal(stats.written + stats.zeroBytes, data.length);
    // The aligned run (37 blocks) and the tail's whole blocks at least were not written.
    assert.ok(stats.zeroBytes >= 37 * 4096 + 4096, `zeroBytes ${stats.zeroBytes}`);
  });

  for (const [ss, tweak] of [
    [512, 0],
    [4096, 8],
  ] as const) {
    test(`encrypt, re-encrypt and decrypt through the pipeline match per-sector XTS (${name}, ${ss}, tweak ${tweak})`, async () => {
      const k1 = randomBytes(64);
      const k2 = randomBytes(64);
      const c1 = p().addCipher({ encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: ss }, k1);
      const c2 = p().addCipher({ encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512 }, k2);
      const srcSize = 1_000_000; // not a sector multiple: the target pads with zeros
      const length = Math.ceil(srcSize / ss) * ss;
      const plain = sample(srcSize);
      const padded = new Uint8Array(length);
      padded.set(plain);
      const src = new MemoryDevice(plain);
      const enc = new MemoryDevice(4096 + length);
      await copyData({ device: src, base: 0, size: srcSize }, { device: enc, base: 4096, encrypt: { cipher: c1, ivTweak: tweak }, zeros: 'write' }, length, {
        pool: p(),
        chunkBytes: 256 * 1024,
      });
      assert.deepEqual(Buffer.from(enc.bytes.subarray(4096)), Buffer.from(xts(false, padded, k1, ss, tweak)));
      // Re-encryption: decrypt with key 1 and encrypt with key 2 in one pass.
      const re = new MemoryDevice(length);
      await copyData(
        { device: enc, base: 4096, size: length, decrypt: { cipher: c1, ivTweak: tweak } },
        { device: re, base: 0, encrypt: { cipher: c2, ivTweak: 0 }, zeros: 'write' },
        length,
        { pool: p(), chunkBytes: 256 * 1024 },
      );
      assert.deepEqual(Buffer.from(xts(true, re.bytes, k2, 512, 0)), Buffer.from(padded));
      // Decrypt to plaintext and compare with the source.
      const back = new MemoryDevice(length);
      await copyData({ device: enc, base: 4096, size: length, decrypt: { cipher: c1, ivTweak: tweak } }, { device: back, base: 0, zeros: 'skip' }, length, {
        pool: p(),
      });
      assert.deepEqual(Buffer.from(back.bytes), Buffer.from(padded));
      assert.equal(
        await compareData({ device: enc, base: 4096, size: length, decrypt: { cipher: c1, ivTweak: tweak } }, { device: src, base: 0, size: srcSize }, length, {
          pool: p(),
          chunkBytes: 65536,
        }),
        -1,
      );
      p().dropCipher(c1);
      p().dropCipher(c2);
    });
  }
}

test('compareData reports the first differing byte, including past the shorter end', async () => {
  const a = new Uint8Array(randomBytes(500_000));
  const b = new Uint8Array(a);
  b[333_333] ^= 1;
  b[400_000] ^= 1;
  const opts = { pool, chunkBytes: 65536 };
  assert.equal(await compareData({ device: new MemoryDevice(a), base: 0, size: a.length }, { device: new MemoryDevice(b), base: 0, size: b.length }, a.length, opts), 333_333);
  const longer = new Uint8Array(600_000);
  longer.set(a);
  assert.equal(await compareData({ device: new MemoryDevice(a), base: 0, size: a.length }, { device: new MemoryDevice(longer), base: 0, size: longer.length }, longer.length, opts), -1);
  longer[599_999] = 1;
  assert.equal(await compareData({ device: new MemoryDevice(a), base: 0, size: a.length }, { device: new MemoryDevice(longer), base: 0, size: longer.length }, longer.length, opts), 599_999);
});

test('an aborted signal stops the copy with CancelledError', async () => {
  const src = new MemoryDevice(8 << 20);
  const dst = new MemoryDevice(8 << 20);
  const controller = new AbortController();
  let chunks = 0;
  await assert.rejects(
    copyData({ device: src, base: 0, size: src.size }, { device: dst, base: 0, zeros: 'write' }, src.size, {
      pool,
      chunkBytes: 1 << 20,
      signal: controller.signal,
      onProgress: () => {
        if (++chunks === 2) controller.abort();
      },
    }),
    CancelledError,
  );
  assert.equal(chunks, 2);
});

test('pool errors are typed: weak keys refused up front, unknown ciphers fail the job', async () => {
  const weak = new Uint8Array(64).fill(7);
  assert.throws(() => pool.addCipher({ encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512 }, weak), WeakKeyError);
  const buf = new Uint8Array(new SharedArrayBuffer(512));
  await assert.rejects(pool.runShared(buf, { length: 512, zeroBlock: 0, encrypt: { cipher: 999, iv: 0, length: 512 } }), DeviceIoError);
  await assert.rejects(inline.runShared(buf, { length: 512, zeroBlock: 0, encrypt: { cipher: 999, iv: 0, length: 512 } }), /not registered/);
  await assert.rejects(pool.runShared(new Uint8Array(512), { length: 512, zeroBlock: 0 }), /SharedArrayBuffer/);
});

test('a fresh sparse file target keeps zero runs as holes', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const size = 16 << 20;
    const data = new Uint8Array(size);
    data.set(randomBytes(1 << 20), 0);
    data.set(randomBytes(1 << 20), 9 << 20);
    const path = join(dir, 'out.raw');
    const dst = await FileDevice.open(path, { create: true, size });
    await copyData({ device: new MemoryDevice(data), base: 0, size }, { device: dst, base: 0, zeros: 'skip' }, size, { pool });
    await dst.close();
    const st = statSync(path);
    assert.equal(st.size, size);
    assert.ok(st.blocks * 512 <= 3 << 20, `allocated ${st.blocks * 512}`);
  } finally {
    cleanup();
  }
});

/** A memory target whose writes finish after a random delay (out of order), counting how many overlap. */
class SlowWriteDevice extends MemoryDevice {
  inFlight = 0;
  maxInFlight = 0;
  writes = 0;
  alignedMemory = 0;
  failAt = -1;
  override async write(buf: Uint8Array, offset: number): Promise<void> {
    const n = this.writes++;
    if (isAddressAligned(buf, 4096)) this.alignedMemory++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((r) => setTimeout(r, Math.random() * 6));
      if (n === this.failAt) throw new DeviceIoError('injected write failure');
      await super.write(buf, offset);
    } finally {
      this.inFlight--;
    }
  }
}

for (const concurrency of [1, 3]) {
  test(`writeConcurrency ${concurrency}: out-of-order completion still yields every byte, from aligned chunk memory`, async () => {
    const data = new Uint8Array(randomBytes(6 << 20));
    const dst = new SlowWriteDevice(data.length);
    const progress: number[] = [];
    const stats = await copyData({ device: new MemoryDevice(data), base: 0, size: data.length }, { device: dst, base: 0, zeros: 'write' }, data.length, {
      pool,
      chunkBytes: 256 * 1024,
      depth: 6,
      writeConcurrency: concurrency,
      onProgress: (b) => progress.push(b),
    });
    assert.deepEqual(Buffer.from(dst.bytes), Buffer.from(data));
    assert.equal(stats.bytes, data.length);
    assert.equal(dst.writes, 24);
    assert.equal(dst.maxInFlight, concurrency, `at most (and, with 24 slow writes, at some point exactly) ${concurrency} in flight`);
    assert.deepEqual(progress, [...progress].sort((a, b) => a - b), 'progress never goes back');
    assert.equal(progress.at(-1), data.length);
    // The chunk buffers are aligned for O_DIRECT when the native module is there.
    assert.equal(dst.alignedMemory, nativeAddon() ? 24 : 0);
  });
}

test('a failed write among several in flight fails the copy, after the others have settled', async () => {
  const dst = new SlowWriteDevice(8 << 20);
  dst.failAt = 5;
  await assert.rejects(
    copyData({ device: new MemoryDevice(8 << 20), base: 0, size: 8 << 20 }, { device: dst, base: 0, zeros: 'write' }, 8 << 20, {
      pool,
      chunkBytes: 256 * 1024,
      writeConcurrency: 4,
    }),
    /injected write failure/,
  );
  assert.equal(dst.inFlight, 0, 'no write still running when the copy reports its failure');
  assert.ok(dst.writes < 32, `the copy stopped early (${dst.writes} writes issued)`);
});
