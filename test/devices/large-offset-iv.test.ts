/**
 * IVs past the 2^32-sector boundary (byte offsets beyond 2 TiB) on sparse 3 TiB LUKS1
 * volumes made by qemu-img: `plain64` uses the full 64-bit sector number, `plain` wraps at
 * 2^32. Data QEMU writes there must read back here and the other way round, for both.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { Passphrase } from '../../src/secret.js';
import { parseEncryption } from '../../src/crypto/cipher-spec.js';
import { createSectorCipher } from '../../src/crypto/sector-cipher.js';
import { needTools, run, tempDir } from '../helpers/tools.js';

const PASS = 'past-2TiB';
const SECTOR_2_32 = 2 ** 32; // first sector whose plain IV wraps
const QEMU_OFFSET = (SECTOR_2_32 + 5) * 512; // plaintext byte offset QEMU writes at
const OUR_OFFSET = (SECTOR_2_32 + 77) * 512; // plaintext byte offset we write at
const LEN = 8192;

for (const ivgen of ['plain64', 'plain'] as const) {
  test(`LUKS1 aes-xts-${ivgen} beyond 2 TiB agrees with qemu-img/qemu-io both ways`, { skip: needTools('qemu-img', 'qemu-io') }, async () => {
    const tmp = tempDir();
    try {
      const vol = join(tmp.dir, `vol-${ivgen}.luks`);
      const secret = join(tmp.dir, 'pass');
      writeFileSync(secret, PASS);
      const obj = `secret,id=sec0,file=${secret}`;
      // qemu-img's PBKDF benchmark fails now and then on a busy machine ("Unable to get accurate CPU usage"): retry.
      for (let attempt = 1; ; attempt++) {
        try {
          run('qemu-img', ['create', '-f', 'luks', '--object', obj, '-o', `key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=${ivgen},iter-time=100`, vol, '3T']);
          break;
        } catch (err) {
          if (attempt >= 4 || !/accurate CPU usage/.test(String((err as { stderr?: string }).stderr ?? err))) throw err;
        }
      }
      const opts = `driver=luks,key-secret=sec0,file.filename=${vol}`;
      run('qemu-io', ['--object', obj, '--image-opts', opts, '-c', `write -P 0xab ${QEMU_OFFSET} ${LEN}`]);

      const data = await FileDevice.open(vol);
      try {
        const volume = await LuksVolume.open(data);
        assert.equal(volume.encryption, `aes-xts-${ivgen}`);
        const { key } = await volume.unlock(Passphrase.fromString(PASS), { forWrite: true });
        const keyCopy = key.expose().slice();
        const dev = EncryptedDevice.open(data, volume, key);
        const got = new Uint8Array(LEN);
        await dev.read(got, QEMU_OFFSET);
        assert.ok(got.every((b) => b === 0xab), 'QEMU-written plaintext reads back');
        await dev.write(new Uint8Array(LEN).fill(0xcd), OUR_OFFSET);
        await dev.flush();

        // The IV rule itself: the stored sector n = 2^32 + 5 decrypts under its own IV rule
        // (plain: n mod 2^32, plain64: n) and not under the other one.
        const stored = new Uint8Array(512);
        await data.read(stored, volume.dataOffset + QEMU_OFFSET);
        for (const rule of ['plain', 'plain64'] as const) {
          const cipher = createSectorCipher(parseEncryption(`aes-xts-${rule}`), keyCopy, 512);
          const sector = stored.slice();
          cipher.decrypt(sector, SECTOR_2_32 + 5);
          assert.equal(sector.every((b) => b === 0xab), rule === ivgen, `${rule} IV rule on a ${ivgen} volume`);
        }
        await dev.close();
      } finally {
        await data.close();
      }

      const out = run('qemu-io', ['--object', obj, '--image-opts', opts, '-c', `read -P 0xcd ${OUR_OFFSET} ${LEN}`]);
      assert.doesNotMatch(out, /Pattern verification failed/);
      assert.match(out, /read 8192\/8192 bytes/);
    } finally {
      tmp.cleanup();
    }
  });
}
