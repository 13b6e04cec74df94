import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { NbdServer } from '../../src/nbd/server.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { formatLuks } from '../../src/luks/index.js';
import { Passphrase } from '../../src/secret.js';
import { needTools, tempDir, whichTool } from '../helpers/tools.js';

const execFileP = promisify(execFile);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

test('encrypted export (LUKS2, 4096-byte sectors): qemu-io unaligned writes and reads match a shadow buffer', { skip: needTools('qemu-io') }, async () => {
  const tmp = tempDir('brickcrypt-nbd-enc-');
  const data = new MemoryDevice(16 * 1024 * 1024 + 2 * 1024 * 1024);
  const { volume, key } = await formatLuks(data, { type: 'luks2', passphrase: Passphrase.fromString('p'), pbkdf: 'pbkdf2', iterations: 1000, sectorSize: 4096 });
  const plain = EncryptedDevice.open(data, volume, key);
  const server = new NbdServer({ exports: { enc: { device: plain } } });
  const sock = join(tmp.dir, 'enc.sock');
  await server.listen({ socket: sock });
  try {
    // A fresh volume's payload decrypts to noise: the shadow starts from what it reads as.
    const shadow = new Uint8Array(plain.size);
    await plain.read(shadow, 0);
    const cmds: string[] = [];
    let seed = 99;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    for (let i = 0; i < 40; i++) {
      const len = 1 + rnd(20000);
      const off = rnd(plain.size - len);
      const pat = 1 + rnd(255);
      cmds.push('-c', `write -P ${pat} ${off} ${len}`);
      shadow.fill(pat, off, off + len);
    }
    await execFileP(whichTool('qemu-io')!, ['-f', 'raw', ...cmds, `nbd+unix:///enc?socket=${sock}`]);
    const back = new Uint8Array(plain.size);
    await plain.read(back, 0);
    assert.equal(sha(back), sha(shadow));
    // Nothing of the plaintext patterns shows in the ciphertext area as long runs.
    const ct = data.bytes.subarray(volume.dataOffset);
    assert.notEqual(sha(ct), sha(shadow));
    const out = await execFileP(whichTool('qemu-io')!, ['-r', '-f', 'raw', '-c', `read -P ${shadow[12345]} 12345 1`, `nbd+unix:///enc?socket=${sock}`]);
    assert.doesNotMatch(out.stdout, /Pattern verification failed/);
  } finally {
    await server.close();
    await plain.close();
    tmp.cleanup();
  }
});
