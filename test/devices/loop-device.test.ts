/**
 * A real block device: a loop device over a file (needs root and losetup; locally a missing
 * one skips loudly, under CI=true it fails). FileDevice must take its size from sysfs, refuse
 * to resize it, write it with O_DIRECT, and `convert --target-exists` must fill it - or, when it
 * is too small, leave it untouched.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice, statPath } from '../../src/devices/file-device.js';
import { allocateAligned } from '../../src/native-addon.js';
import { convert } from '../../src/workflows/convert.js';
import { verify } from '../../src/workflows/verify.js';
import { Passphrase } from '../../src/secret.js';
import { DeviceIoError, InsufficientSpaceError } from '../../src/errors.js';
import { needRoot, needTools, run, runStatus, tempDir } from '../helpers/tools.js';

const skip = needTools('losetup', 'cryptsetup') || needRoot('loop devices');
const tmp = tempDir('brickcrypt-loop-');
const loops: string[] = [];
after(() => {
  for (const loop of loops) runStatus('losetup', ['-d', loop]);
  tmp.cleanup();
});

/** A loop device over a new file of `bytes` (detached after the tests). */
function loopDevice(name: string, bytes: number): { loop: string; backing: string } {
  const backing = join(tmp.dir, name);
  writeFileSync(backing, '');
  truncateSync(backing, bytes);
  const loop = run('losetup', ['--find', '--show', backing]).trim();
  loops.push(loop);
  return { loop, backing };
}

const pass = async () => Passphrase.fromString('loop device passphrase');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('FileDevice on a loop device: size from sysfs, no resize, O_DIRECT writes that reach the backing file', { skip }, async () => {
  const { loop, backing } = loopDevice('dev.img', 4 << 20);
  const info = await statPath(loop);
  assert.equal(info.isBlockDevice, true);
  assert.equal(info.size, 4 << 20);
  const dev = await FileDevice.open(loop, { bypassCache: true });
  try {
    assert.equal(dev.isBlockDevice, true);
    assert.equal(dev.size, 4 << 20);
    assert.equal(dev.cacheBypass.unavailable, undefined);
    await assert.rejects(dev.resize(8 << 20), DeviceIoError);
    const data = allocateAligned(1 << 20, 4096).view;
    data.set(randomBytes(data.length));
    await dev.write(data, 1 << 20);
    assert.equal(dev.cacheBypass.bytes, 1 << 20);
    await dev.flush();
    // O_DIRECT on the loop device went to its backing file, not into a cache of /dev/loopN.
    assert.equal(sha(readFileSync(backing).subarray(1 << 20, 2 << 20)), sha(data));
  } finally {
    await dev.close();
  }
});

test('convert --target-exists into a loop device: O_DIRECT by default, LUKS2 over the whole device, cryptsetup reads it, the plaintext matches', { skip }, async () => {
  const { loop, backing } = loopDevice('vol.img', 24 << 20);
  const src = join(tmp.dir, 'src.raw');
  writeFileSync(src, randomBytes(8 << 20));
  const report = await convert({
    source: src,
    target: loop,
    targetFormat: 'luks2',
    targetExists: true,
    targetPassphrase: pass,
    luks: { pbkdf: 'pbkdf2', iterations: 1000 },
    workers: 1,
  });
  assert.equal(report.target.existing, true);
  assert.equal(report.target.containerSize, 24 << 20);
  assert.equal(report.target.payloadSize, (24 << 20) - report.target.dataOffset!);
  // The default cache mode for a block device is 'none' (O_DIRECT).
  assert.equal(report.cache.mode, 'none');
  assert.ok(report.cache.bytes >= 8 << 20, `O_DIRECT bytes ${report.cache.bytes}`);
  // The whole payload beyond the source reads as zeros; the device opens in cryptsetup.
  await verify({ a: src, b: loop, bPassphrase: pass, workers: 1 });
  const keyFile = join(tmp.dir, 'key');
  writeFileSync(keyFile, 'loop device passphrase');
  assert.match(run('cryptsetup', ['luksDump', backing]), /Version:\s+2/);
  assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, backing]).status, 0);
});

test('convert --target-exists into a loop device that is too small: refused before a byte is written', { skip }, async () => {
  const { loop, backing } = loopDevice('small.img', 6 << 20);
  writeFileSync(backing, randomBytes(6 << 20)); // old content that must survive
  const before = sha(readFileSync(backing));
  const src = join(tmp.dir, 'big.raw');
  writeFileSync(src, randomBytes(8 << 20));
  for (const targetFormat of ['raw', 'luks1'] as const) {
    await assert.rejects(
      convert({ source: src, target: loop, targetFormat, targetExists: true, targetPassphrase: pass, luks: targetFormat === 'luks1' ? { pbkdf: 'pbkdf2', iterations: 1000 } : undefined, workers: 1 }),
      InsufficientSpaceError,
    );
  }
  assert.equal(sha(readFileSync(backing)), before, 'the device is unchanged');
});
