import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { EncryptedDevice, type EncryptionParams } from '../../src/devices/encrypted-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { VolumeKey } from '../../src/secret.js';
import { OutOfRangeError, ReadOnlyDeviceError, ReadOnlyVolumeError } from '../../src/errors.js';

/** Independent reference: one OpenSSL XTS call per sector, IV = u64LE(pos/512 + tweak). */
function referenceEncrypt(plain: Uint8Array, key: Uint8Array, sectorSize: number, ivTweak: number): Uint8Array {
  const out = new Uint8Array(plain.length);
  for (let pos = 0; pos < plain.length; pos += sectorSize) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(pos / 512 + ivTweak));
    const c = createCipheriv('aes-256-xts', key, iv).setAutoPadding(false);
    out.set(Buffer.concat([c.update(plain.subarray(pos, pos + sectorSize)), c.final()]), pos);
  }
  return out;
}

/** Deterministic PRNG so a failure can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0;
    return s / 2 ** 32;
  };
}

function setup(sectorSize: number, ivTweak: number, payload = 256 * 1024) {
  const keyBytes = randomBytes(64);
  const dataOffset = 8192;
  const data = new MemoryDevice(dataOffset + payload);
  const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize, ivTweak, dataOffset, payloadSize: payload };
  const dev = EncryptedDevice.open(data, params, VolumeKey.copyOf(keyBytes));
  return { dev, data, keyBytes, params, dataOffset };
}

for (const [sectorSize, ivTweak] of [
  [512, 0],
  [4096, 0],
  [4096, 24],
  [1024, 3],
] as const) {
  test(`random unaligned reads/writes match a shadow buffer (sector ${sectorSize}, iv_tweak ${ivTweak})`, async () => {
    const { dev, data, keyBytes, dataOffset } = setup(sectorSize, ivTweak);
    // A fresh data device of zeros decrypts to garbage: start from an encrypted-zero payload.
    await dev.writeZeroes(0, dev.size);
    const shadow = new Uint8Array(dev.size);
    const rnd = prng(sectorSize + ivTweak);
    for (let i = 0; i < 300; i++) {
      const len = Math.floor(rnd() * (i % 10 === 0 ? 40000 : 3000));
      const off = Math.floor(rnd() * (dev.size - len));
      if (rnd() < 0.5) {
        const buf = new Uint8Array(randomBytes(len));
        await dev.write(buf, off);
        shadow.set(buf, off);
      } else {
        const buf = new Uint8Array(len);
        await dev.read(buf, off);
        assert.deepEqual(Buffer.from(buf), Buffer.from(shadow.subarray(off, off + len)), `read ${off}+${len}`);
      }
    }
    // The ciphertext equals an independent per-sector encryption with the documented IV rule.
    const expected = referenceEncrypt(shadow, keyBytes, sectorSize, ivTweak);
    assert.ok(Buffer.from(data.bytes.subarray(dataOffset)).equals(Buffer.from(expected)));
    // The header area before the payload is never touched.
    assert.ok(data.bytes.subarray(0, dataOffset).every((b) => b === 0));
    await dev.close();
  });
}

test('concurrent unaligned writes into the same sectors lose nothing', async () => {
  const { dev } = setup(4096, 0, 64 * 1024);
  await dev.writeZeroes(0, dev.size);
  const shadow = new Uint8Array(dev.size);
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 64; i++) {
    const off = 4000 + i * 97;
    const buf = new Uint8Array(50).fill(i + 1);
    shadow.set(buf, off);
    writes.push(dev.write(buf, off));
  }
  await Promise.all(writes);
  const all = new Uint8Array(dev.size);
  await dev.read(all, 0);
  assert.deepEqual(Buffer.from(all), Buffer.from(shadow));
});

test('writeZeroes and discard without allowDiscards write encrypted zeros; extents report all data', async () => {
  const { dev, data, dataOffset } = setup(512, 0, 64 * 1024);
  await dev.write(new Uint8Array(randomBytes(dev.size)), 0);
  await dev.writeZeroes(1000, 5000);
  await dev.discard(20000, 10000);
  const all = new Uint8Array(dev.size);
  await dev.read(all, 0);
  assert.ok(all.subarray(1000, 6000).every((b) => b === 0));
  assert.ok(all.subarray(20000, 30000).every((b) => b === 0));
  assert.notEqual(all[999], undefined);
  // Ciphertext of zeros is not zeros.
  assert.ok(!data.bytes.subarray(dataOffset + 1024, dataOffset + 5632).every((b) => b === 0));
  assert.deepEqual(await dev.extents(0, dev.size), [{ offset: 0, length: dev.size, hole: false, zero: false }]);
  assert.equal(dev.capabilities.discard, false);
});

test('allowDiscards passes whole-sector discards through', async () => {
  const keyBytes = randomBytes(64);
  const data = new MemoryDevice(4096 + 16384);
  const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512, ivTweak: 0, dataOffset: 4096, payloadSize: 16384 };
  const dev = EncryptedDevice.open(data, params, VolumeKey.copyOf(keyBytes), { allowDiscards: true });
  await dev.write(new Uint8Array(16384).fill(7), 0);
  await dev.writeZeroes(100, 2000, { mayTrim: true }); // sectors 1..3 discarded, partial heads kept
  assert.ok(data.bytes.subarray(4096 + 512, 4096 + 2048).every((b) => b === 0));
  assert.ok(!data.bytes.subarray(4096, 4096 + 512).every((b) => b === 0));
});

test('out-of-range access, read-only views and fenced volumes are refused', async () => {
  const { dev, data, params, keyBytes } = setup(512, 0, 8192);
  await assert.rejects(dev.read(new Uint8Array(2), dev.size - 1), OutOfRangeError);
  await assert.rejects(dev.write(new Uint8Array(1), -1), OutOfRangeError);
  const ro = EncryptedDevice.open(data, params, VolumeKey.copyOf(keyBytes), { readOnly: true });
  await assert.rejects(ro.write(new Uint8Array(1), 0), ReadOnlyDeviceError);
  const fenced = { ...params, readOnlyReason: 'unknown mandatory requirement "x-future"' };
  assert.throws(() => EncryptedDevice.open(data, fenced, VolumeKey.copyOf(keyBytes)), ReadOnlyVolumeError);
  const fencedRo = EncryptedDevice.open(data, fenced, VolumeKey.copyOf(keyBytes), { readOnly: true });
  await fencedRo.read(new Uint8Array(10), 5);
});

test('close wipes the volume key', async () => {
  const { data, params, keyBytes } = setup(512, 0, 8192);
  const key = VolumeKey.copyOf(keyBytes);
  const dev = EncryptedDevice.open(data, params, key);
  await dev.close();
  assert.equal(key.wiped, true);
  await assert.rejects(dev.read(new Uint8Array(1), 0));
});

test('a payload that ends inside a sector exposes whole sectors only', async () => {
  const data = new MemoryDevice(4096 + 10000);
  const params: EncryptionParams = { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 4096, ivTweak: 0, dataOffset: 4096, payloadSize: 10000 };
  const dev = EncryptedDevice.open(data, params, VolumeKey.copyOf(randomBytes(64)));
  assert.equal(dev.size, 8192);
});
