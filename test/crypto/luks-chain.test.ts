/**
 * End to end through the crypto core on real cryptsetup volumes: passphrase ->
 * KDF -> keyslot decryption (sector cipher) -> AF merge -> volume-key digest ->
 * payload decryption. The header parsing here is deliberately minimal (the
 * LUKS modules own it); the point is that every crypto primitive matches cryptsetup.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afMerge } from '../../src/crypto/af-split.js';
import { parseCipherSpec, parseEncryption } from '../../src/crypto/cipher-spec.js';
import { deriveKey, type KdfParams } from '../../src/crypto/kdf.js';
import { createSectorCipher } from '../../src/crypto/sector-cipher.js';
import { hashInfo } from '../../src/crypto/hash.js';
import { UnsupportedCipherError, UnsupportedError } from '../../src/errors.js';
import { extractFixture, needFixtures, needTools, run, tempDir } from '../helpers/tools.js';

const cstr = (b: Buffer, off: number, len: number) => b.toString('latin1', off, off + len).replace(/\0.*$/s, '');

interface Luks1 {
  cipherName: string;
  cipherMode: string;
  hash: string;
  payloadOffset: number;
  keyBytes: number;
  mkDigest: Buffer;
  mkSalt: Buffer;
  mkIter: number;
  slots: Array<{ iterations: number; salt: Buffer; offset: number; stripes: number }>;
}

/** LUKS1 header fields (LUKS1 On-Disk Format 2.1, big-endian). */
function readLuks1(h: Buffer): Luks1 {
  assert.equal(h.subarray(0, 6).toString('latin1'), 'LUKS\xba\xbe');
  const slots: Luks1['slots'] = [];
  for (let i = 0; i < 8; i++) {
    const o = 208 + 48 * i;
    if (h.readUInt32BE(o) === 0x00ac71f3) {
      slots.push({ iterations: h.readUInt32BE(o + 4), salt: h.subarray(o + 8, o + 40), offset: h.readUInt32BE(o + 40), stripes: h.readUInt32BE(o + 44) });
    }
  }
  return {
    cipherName: cstr(h, 8, 32),
    cipherMode: cstr(h, 40, 32),
    hash: cstr(h, 72, 32),
    payloadOffset: h.readUInt32BE(104),
    keyBytes: h.readUInt32BE(108),
    mkDigest: h.subarray(112, 132),
    mkSalt: h.subarray(132, 164),
    mkIter: h.readUInt32BE(164),
    slots,
  };
}

/** Unlocks the first slot the passphrase opens; returns the volume key. */
async function unlockLuks1(img: Buffer, passphrase: Uint8Array): Promise<{ key: Uint8Array; hdr: Luks1 }> {
  const hdr = readLuks1(img);
  const spec = parseCipherSpec(hdr.cipherName, hdr.cipherMode, hdr.keyBytes);
  for (const slot of hdr.slots) {
    const dk = await deriveKey({ type: 'pbkdf2', hash: hdr.hash, iterations: slot.iterations }, passphrase, slot.salt, hdr.keyBytes);
    const sectors = Math.ceil((hdr.keyBytes * slot.stripes) / 512);
    const material = new Uint8Array(img.subarray(slot.offset * 512, (slot.offset + sectors) * 512));
    createSectorCipher(spec, dk, 512).decrypt(material, 0);
    const key = afMerge(material, hdr.keyBytes, slot.stripes, hdr.hash);
    const digest = await deriveKey({ type: 'pbkdf2', hash: hdr.hash, iterations: hdr.mkIter }, key, hdr.mkSalt, 20);
    if (Buffer.from(digest).equals(hdr.mkDigest)) return { key, hdr };
  }
  throw new Error('no slot opened');
}

function dumpedVolumeKey(path: string, passphrase: Uint8Array, dir: string): string {
  const keyFile = join(dir, 'pass');
  writeFileSync(keyFile, passphrase);
  const out = run('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file', keyFile, path]);
  const m = /(?:MK|Volume key) dump:\s*((?:[0-9a-f]{2}\s*)+)/i.exec(out);
  assert.ok(m, out);
  return m[1]!.replace(/\s+/g, '');
}

const fixtures = needFixtures();

test('compatimage (LUKS1 aes-cbc-essiv:sha256, 128-bit): unlock, volume key equals cryptsetup, payload sha256 matches', { skip: fixtures || needTools('cryptsetup') }, async () => {
  const t = tempDir();
  try {
    const path = extractFixture('compatimage.img.xz', t.dir);
    const img = readFileSync(path);
    const pass = new Uint8Array(Buffer.from('compatkey'));
    const { key, hdr } = await unlockLuks1(img, pass);
    assert.equal(Buffer.from(key).toString('hex'), dumpedVolumeKey(path, pass, t.dir));
    const payload = new Uint8Array(img.subarray(hdr.payloadOffset * 512));
    createSectorCipher(parseCipherSpec(hdr.cipherName, hdr.cipherMode), key, 512).decrypt(payload, 0);
    assert.equal(createHash('sha256').update(payload).digest('hex'), '7428e8f2436882a07eb32765086f5c899474c08b5576f556b573d2aabdf923e8');
  } finally {
    t.cleanup();
  }
});

test('compatv10image (LUKS 1.0, aes-cbc-plain, sha1): unlock and payload sha1 matches', { skip: fixtures }, async () => {
  const t = tempDir();
  try {
    const img = readFileSync(extractFixture('compatv10image.img.xz', t.dir));
    const { key, hdr } = await unlockLuks1(img, new Uint8Array(Buffer.from('compatkey')));
    const payload = new Uint8Array(img.subarray(hdr.payloadOffset * 512));
    createSectorCipher(parseCipherSpec(hdr.cipherName, hdr.cipherMode), key, 512).decrypt(payload, 0);
    assert.equal(createHash('sha1').update(payload).digest('hex'), '51b48c2471a7593ceaf14dc5e66bca86ed05f6cc');
  } finally {
    t.cleanup();
  }
});

test('luks1-images: aes xts-plain64 / cbc-essiv volumes decrypt to the FAT12 volume DEAD-BABE; others are refused by name', { skip: fixtures }, async () => {
  const t = tempDir();
  try {
    const dir = join(extractFixture('luks1-images.tar.xz', t.dir), 'luks1-images');
    const pass = new Uint8Array(readFileSync(join(dir, 'keyfile1')));
    for (const name of ['luks1_aes-xts-plain64-sha1.img', 'luks1_aes-xts-plain64-sha256.img', 'luks1_aes-cbc-essiv-sha256-sha1.img']) {
      const img = readFileSync(join(dir, name));
      const { key, hdr } = await unlockLuks1(img, pass);
      const boot = new Uint8Array(img.subarray(hdr.payloadOffset * 512, hdr.payloadOffset * 512 + 4096));
      createSectorCipher(parseCipherSpec(hdr.cipherName, hdr.cipherMode), key, 512).decrypt(boot, 0);
      const b = Buffer.from(boot);
      assert.equal(b.readUInt16LE(510), 0xaa55, name);
      assert.equal(b.readUInt32LE(39), 0xdeadbabe, `${name}: FAT volume id`);
    }
    for (const name of ['luks1_serpent-xts-plain64-sha1.img', 'luks1_twofish-xts-plain64-sha256.img', 'luks1_aes-lrw-plain64-sha1.img']) {
      const hdr = readLuks1(readFileSync(join(dir, name)));
      assert.throws(() => parseCipherSpec(hdr.cipherName, hdr.cipherMode), UnsupportedCipherError, name);
    }
    const wp = readLuks1(readFileSync(join(dir, 'luks1_aes-xts-plain64-whirlpool.img')));
    assert.throws(() => hashInfo(wp.hash), (e: unknown) => e instanceof UnsupportedError && /whirlpool/.test(e.message));
  } finally {
    t.cleanup();
  }
});

interface Luks2Json {
  keyslots: Record<string, {
    key_size: number;
    af: { stripes: number; hash: string };
    area: { offset: string; size: string; encryption: string; key_size: number };
    kdf: { type: string; salt: string; hash?: string; iterations?: number; time?: number; memory?: number; cpus?: number };
  }>;
  digests: Record<string, { type: string; hash: string; iterations: number; salt: string; digest: string }>;
  segments: Record<string, { offset: string; iv_tweak: string; encryption: string; sector_size: number }>;
}

function luks2Json(img: Buffer): Luks2Json {
  // Primary header magic "LUKS\xba\xbe" version 2 (the secondary copy uses "SKUL\xba\xbe").
  assert.equal(img.subarray(0, 6).toString('latin1'), 'LUKS\xba\xbe');
  assert.equal(img.readUInt16BE(6), 2);
  const hdrSize = Number(img.readBigUInt64BE(8));
  return JSON.parse(cstr(img, 4096, hdrSize - 4096)) as Luks2Json;
}

async function unlockLuks2(img: Buffer, pass: Uint8Array): Promise<Uint8Array> {
  const j = luks2Json(img);
  const digest = Object.values(j.digests)[0]!;
  for (const ks of Object.values(j.keyslots)) {
    const kdf: KdfParams =
      ks.kdf.type === 'pbkdf2'
        ? { type: 'pbkdf2', hash: ks.kdf.hash!, iterations: ks.kdf.iterations! }
        : { type: ks.kdf.type as 'argon2i' | 'argon2id', time: ks.kdf.time!, memoryKiB: ks.kdf.memory!, parallel: ks.kdf.cpus! };
    const dk = await deriveKey(kdf, pass, Buffer.from(ks.kdf.salt, 'base64'), ks.area.key_size);
    const off = Number(ks.area.offset);
    const len = Math.ceil((ks.key_size * ks.af.stripes) / 512) * 512;
    const material = new Uint8Array(img.subarray(off, off + len));
    createSectorCipher(parseEncryption(ks.area.encryption), dk, 512).decrypt(material, 0);
    const key = afMerge(material, ks.key_size, ks.af.stripes, ks.af.hash);
    const check = await deriveKey({ type: 'pbkdf2', hash: digest.hash, iterations: digest.iterations }, key, Buffer.from(digest.salt, 'base64'), Buffer.from(digest.digest, 'base64').length);
    if (Buffer.from(check).equals(Buffer.from(digest.digest, 'base64'))) return key;
  }
  throw new Error('no LUKS2 keyslot opened');
}

test('compatimage2 (LUKS2, argon2i keyslot): unlock through deriveKey and match cryptsetup --dump-volume-key', { skip: fixtures || needTools('cryptsetup') }, async () => {
  const t = tempDir();
  try {
    const path = extractFixture('compatimage2.img.xz', t.dir);
    const img = readFileSync(path);
    const pass = new Uint8Array(Buffer.from('compatkey'));
    const key = await unlockLuks2(img, pass);
    assert.equal(Buffer.from(key).toString('hex'), dumpedVolumeKey(path, pass, t.dir));
  } finally {
    t.cleanup();
  }
});

/** Reads `len` bytes at `pos` of a file. */
function readAt(path: string, pos: number, len: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}

for (const sectorSize of [512, 4096]) {
  test(`cryptsetup offline-encrypted LUKS2 aes-xts-plain64, ${sectorSize}-byte sectors: our cipher decrypts the data`, { skip: needTools('cryptsetup') }, async () => {
    const t = tempDir();
    try {
      const path = join(t.dir, 'vol.img');
      const plain = Buffer.alloc(24 * 1024 * 1024);
      for (let i = 0; i < plain.length; i += 4096) plain.write(`sector at byte ${i} `, i, 'latin1');
      writeFileSync(path, plain);
      const pass = new Uint8Array(Buffer.from('interop-pass'));
      writeFileSync(join(t.dir, 'pass'), pass);
      run('cryptsetup', [
        'reencrypt', '--encrypt', '--type', 'luks2', '--batch-mode', '--force-offline-reencrypt',
        '--reduce-device-size', '16M', '--cipher', 'aes-xts-plain64', '--key-size', '512',
        '--sector-size', String(sectorSize), '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000',
        '--key-file', join(t.dir, 'pass'), path,
      ]);
      const header = readAt(path, 0, 16 * 1024 * 1024);
      const key = await unlockLuks2(header, pass);
      assert.equal(Buffer.from(key).toString('hex'), dumpedVolumeKey(path, pass, t.dir));
      const seg = Object.values(luks2Json(header).segments)[0]!;
      assert.equal(seg.sector_size, sectorSize);
      const offset = Number(seg.offset);
      const cipher = createSectorCipher(parseEncryption(seg.encryption), key, sectorSize);
      // Check two regions: the start and one far in (IV numbers in 512-byte units from the segment start).
      for (const at of [0, 6 * 1024 * 1024]) {
        const data = new Uint8Array(readAt(path, offset + at, 64 * 1024));
        cipher.decrypt(data, Number(seg.iv_tweak) + at / 512);
        assert.deepEqual(Buffer.from(data), plain.subarray(at, at + 64 * 1024), `at ${at}`);
      }
    } finally {
      t.cleanup();
    }
  });
}
