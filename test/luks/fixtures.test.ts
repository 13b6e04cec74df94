/**
 * Unlocking cryptsetup's own test images: payload hashes, unsupported ciphers, unbound keys,
 * mandatory requirements (read-only fence) and every LUKS2 hdr_size.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume, restoreLuksHeader } from '../../src/luks/index.js';
import { Passphrase, VolumeKey } from '../../src/secret.js';
import { ReadOnlyVolumeError, UnsupportedCipherError, UnsupportedError, WrongPassphraseError } from '../../src/errors.js';
import { parseEncryption } from '../../src/crypto/cipher-spec.js';
import { createSectorCipher } from '../../src/crypto/sector-cipher.js';
import { extractFixture, needFixtures, tempDir } from '../helpers/tools.js';

const skip = needFixtures();
const sha = (alg: string, b: Uint8Array): string => createHash(alg).update(b).digest('hex');
const fileHash = (p: string): string => sha('sha256', readFileSync(p));

/** Decrypts the whole payload with the crypto core (IVs in 512-byte units from the segment start). */
async function payload(vol: LuksVolume, key: VolumeKey): Promise<Uint8Array> {
  const data = new Uint8Array(vol.payloadSize);
  await vol.dataDevice.read(data, vol.dataOffset);
  const cipher = createSectorCipher(parseEncryption(vol.encryption), key.expose(), vol.sectorSize);
  cipher.decrypt(data, vol.ivTweak);
  cipher.wipe();
  return data;
}

async function withVolume<T>(path: string, fn: (vol: LuksVolume, dev: FileDevice) => Promise<T>, readOnly = true): Promise<T> {
  const dev = await FileDevice.open(path, { readOnly });
  try {
    return await fn(await LuksVolume.open(dev, { readOnly }), dev);
  } finally {
    await dev.close();
  }
}

test('compatimage (LUKS1 aes-cbc-essiv:sha256) unlocks and the payload hash matches', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = extractFixture('compatimage.img.xz', dir);
    await withVolume(img, async (vol) => {
      assert.equal(vol.version, 1);
      assert.equal(vol.encryption, 'aes-cbc-essiv:sha256');
      assert.equal(vol.dataOffset, 1032 * 512);
      await assert.rejects(vol.unlock(Passphrase.fromString('wrong')), WrongPassphraseError);
      const { key, keyslot } = await vol.unlock(Passphrase.fromString('compatkey'));
      assert.equal(keyslot, 0);
      assert.equal(sha('sha256', await payload(vol, key)), '7428e8f2436882a07eb32765086f5c899474c08b5576f556b573d2aabdf923e8');
      key.wipe();
    });
  } finally {
    cleanup();
  }
});

test('compatv10image (LUKS 1.0 unaligned keyslots, aes-cbc-plain, sha1) unlocks; payload sha1 matches', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = extractFixture('compatv10image.img.xz', dir);
    await withVolume(img, async (vol) => {
      const { key } = await vol.unlock(Passphrase.fromString('compatkey'));
      assert.equal(sha('sha1', await payload(vol, key)), '51b48c2471a7593ceaf14dc5e66bca86ed05f6cc');
      key.wipe();
    });
  } finally {
    cleanup();
  }
});

test('luks1-images: aes images unlock to a FAT12 with id DEAD-BABE; serpent/twofish/lrw/whirlpool give typed errors but dump', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    extractFixture('luks1-images.tar.xz', dir);
    const base = join(dir, 'luks1-images');
    const keyfile = new Uint8Array(readFileSync(join(base, 'keyfile1')));
    const results: Record<string, string> = {};
    for (const f of readdirSync(base).filter((n) => n.endsWith('.img')).sort()) {
      await withVolume(join(base, f), async (vol) => {
        assert.match(vol.dump(), /Key Slot 0: ENABLED/);
        try {
          const { key } = await vol.unlock(Passphrase.copyOf(keyfile));
          const data = await payload(vol, key);
          key.wipe();
          assert.equal(Buffer.from(data.subarray(39, 43)).readUInt32LE(0), 0xdeadbabe, f);
          results[f] = 'ok';
        } catch (err) {
          if (err instanceof UnsupportedCipherError) {
            assert.ok(err.message.includes(vol.encryption.split('-')[0]!), err.message);
            results[f] = 'cipher';
          } else if (err instanceof UnsupportedError) results[f] = 'unsupported';
          else throw err;
        }
      });
    }
    assert.deepEqual(results, {
      'luks1_aes-cbc-essiv-sha256-sha1.img': 'ok',
      'luks1_aes-lrw-plain64-sha1.img': 'cipher',
      'luks1_aes-xts-essiv-wp256-whirlpool.img': 'cipher',
      'luks1_aes-xts-plain64-sha1.img': 'ok',
      'luks1_aes-xts-plain64-sha256.img': 'ok',
      'luks1_aes-xts-plain64-whirlpool.img': 'unsupported',
      'luks1_serpent-xts-plain64-sha1.img': 'cipher',
      'luks1_serpent-xts-plain64-sha256.img': 'cipher',
      'luks1_serpent-xts-plain64-whirlpool.img': 'cipher',
      'luks1_twofish-xts-plain64-sha1.img': 'cipher',
      'luks1_twofish-xts-plain64-sha256.img': 'cipher',
      'luks1_twofish-xts-plain64-whirlpool.img': 'cipher',
    });
  } finally {
    cleanup();
  }
});

test('compatimage2 (LUKS2 argon2i, aes-cbc-essiv) unlocks with the key file content', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = extractFixture('compatimage2.img.xz', dir);
    await withVolume(img, async (vol) => {
      assert.equal(vol.version, 2);
      assert.equal(vol.encryption, 'aes-cbc-essiv:sha256');
      const { key, unbound } = await vol.unlock(Passphrase.fromString('compatkey'));
      assert.equal(unbound, false);
      assert.equal(key.length, 16);
      assert.ok(await vol.verifyVolumeKey(key));
      key.wipe();
    });
  } finally {
    cleanup();
  }
});

test('luks2_mda_images: every hdr_size 16 KiB..4 MiB unlocks', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    extractFixture('luks2_mda_images.tar.xz', dir);
    const files = readdirSync(dir).filter((f) => f.startsWith('test_image_'));
    assert.equal(files.length, 9);
    for (const f of files) {
      await withVolume(join(dir, f), async (vol) => {
        const { key } = await vol.unlock(Passphrase.fromString('Qx3qn46vq0v'));
        assert.ok(await vol.verifyVolumeKey(key));
        assert.equal(vol.dumpJson().hdrSize, Number(f.slice('test_image_'.length)) * 1024);
        key.wipe();
      });
    }
  } finally {
    cleanup();
  }
});

test('luks2_keyslot_unassigned: slot 1 is an unbound key, opened only when named, never as the data key', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = extractFixture('luks2_keyslot_unassigned.img.xz', dir);
    await withVolume(img, async (vol) => {
      assert.deepEqual(vol.unboundKeyslots(), [1]);
      assert.match(vol.dump(), /1: luks2 \(unbound\)/);
      await assert.rejects(vol.unlock(Passphrase.fromString('93R4P4pIqAH8')), WrongPassphraseError);
      const r = await vol.unlock(Passphrase.fromString('93R4P4pIqAH8'), { keyslot: 1 });
      assert.equal(r.unbound, true);
      assert.equal(r.keyslot, 1);
      assert.equal(await vol.verifyVolumeKey(r.key), false);
      r.key.wipe();
    });
  } finally {
    cleanup();
  }
});

test('luks2_header_requirements: dump works, writes and keyslot changes are refused, file unchanged', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    extractFixture('luks2_header_requirements.tar.xz', dir);
    const img = join(dir, 'luks2_header_requirements');
    const before = fileHash(img);
    await withVolume(
      img,
      async (vol) => {
        assert.match(vol.readOnlyReason ?? '', /req0, req1/);
        assert.match(vol.dump(), /Requirements:\treq0 req1/);
        const pass = Passphrase.fromString('blablabl');
        await assert.rejects(vol.unlock(pass, { forWrite: true }), ReadOnlyVolumeError);
        await assert.rejects(vol.addKey(pass, Passphrase.fromString('other'), { iterations: 1000, pbkdf: 'pbkdf2' }), ReadOnlyVolumeError);
        await assert.rejects(vol.changeKey(pass, Passphrase.fromString('other'), { iterations: 1000, pbkdf: 'pbkdf2' }), ReadOnlyVolumeError);
        await assert.rejects(vol.removeKey(pass), ReadOnlyVolumeError);
        await assert.rejects(vol.killSlot(0), ReadOnlyVolumeError);
        const backup = await vol.headerBackup();
        await assert.rejects(restoreLuksHeader(vol.dataDevice, backup, { force: true }), ReadOnlyVolumeError);
      },
      false,
    );
    assert.equal(fileHash(img), before);
    // The twin without requirements is an ordinary volume.
    await withVolume(join(dir, 'luks2_header_requirements_free'), async (vol) => {
      assert.equal(vol.readOnlyReason, undefined);
      const r = await vol.unlock(Passphrase.fromString('blablabl'), { forWrite: true });
      r.key.wipe();
    });
  } finally {
    cleanup();
  }
});
