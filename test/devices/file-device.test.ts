import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice, removeFile, renameDurably, statPath } from '../../src/devices/file-device.js';
import { tempDir } from '../helpers/tools.js';

test('writeZeroes above the hole watermark of a fresh file writes nothing', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, 'f');
    const dev = await FileDevice.open(path, { create: true, size: 8 << 20 });
    await dev.write(new Uint8Array(4096).fill(1), 0);
    await dev.writeZeroes(1 << 20, 7 << 20);
    await dev.flush();
    assert.ok(statSync(path).blocks * 512 <= 64 * 1024);
    assert.deepEqual(await dev.extents(0, 8 << 20), [
      { offset: 0, length: 4096, hole: false, zero: false },
      { offset: 4096, length: (8 << 20) - 4096, hole: true, zero: true },
    ]);
    // Below the watermark zeros are really written.
    await dev.write(new Uint8Array(4096).fill(2), 8192);
    await dev.writeZeroes(0, 8192 + 100);
    const back = new Uint8Array(12288);
    await dev.read(back, 0);
    assert.ok(back.subarray(0, 8292).every((b) => b === 0));
    assert.ok(back.subarray(8292).every((b) => b === 2));
    await dev.close();
  } finally {
    cleanup();
  }
});

test('an existing file is not assumed sparse; mayTrim at the end deallocates the tail', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, 'g');
    writeFileSync(path, Buffer.alloc(4 << 20, 5));
    const dev = await FileDevice.open(path);
    await dev.writeZeroes(100, 1000);
    await dev.writeZeroes(1 << 20, 3 << 20, { mayTrim: true });
    await dev.close();
    const bytes = readFileSync(path);
    assert.equal(bytes.length, 4 << 20);
    assert.ok(bytes.subarray(100, 1100).every((b) => b === 0));
    assert.equal(bytes[99], 5);
    assert.equal(bytes[(1 << 20) - 1], 5);
    assert.ok(bytes.subarray(1 << 20).every((b) => b === 0));
    assert.ok(statSync(path).blocks * 512 <= (1 << 20) + 65536);
  } finally {
    cleanup();
  }
});

test('statPath, renameDurably and removeFile', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    assert.equal((await statPath(a)).exists, false);
    writeFileSync(a, 'x');
    const info = await statPath(a);
    assert.equal(info.isFile, true);
    assert.equal(info.size, 1);
    await renameDurably(a, b);
    assert.equal(existsSync(a), false);
    assert.equal((await statPath(b)).identity, info.identity);
    await removeFile(b);
    await removeFile(b);
    assert.equal(existsSync(b), false);
  } finally {
    cleanup();
  }
});

test('directIo: range-checked, writes update the hole bookkeeping, errors are mapped, and close waits for it', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, 'wt');
    const dev = await FileDevice.open(path, { create: true, size: 1 << 20 });
    const { writeSync } = await import('node:fs');
    await dev.directIo('write', 65536, 4096, async (fd, position) => void writeSync(fd, new Uint8Array(4096).fill(7), 0, 4096, position));
    // Above the old watermark: a later writeZeroes must really zero it, not skip it as a hole.
    await dev.writeZeroes(65536, 1024);
    const back = new Uint8Array(4096);
    await dev.read(back, 65536);
    assert.ok(back.subarray(0, 1024).every((b) => b === 0) && back.subarray(1024).every((b) => b === 7));
    await assert.rejects(dev.directIo('write', (1 << 20) - 10, 20, async () => undefined), /outside/);
    await assert.rejects(dev.directIo('read', (1 << 20) - 10, 20, async () => undefined), /outside/);
    // A read hands out the same descriptor and leaves the bookkeeping alone.
    const { readSync } = await import('node:fs');
    const got = new Uint8Array(8);
    await dev.directIo('read', 65536 + 2000, 8, async (fd, position) => void readSync(fd, got, 0, 8, position));
    assert.deepEqual([...got], [7, 7, 7, 7, 7, 7, 7, 7]);
    await assert.rejects(
      dev.directIo('write', 0, 10, async () => {
        throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
      }),
      (err: Error) => err.name === 'DeviceIoError' && err.message.includes(path),
    );
    // close() waits for a write-through still running.
    let finished = false;
    const slow = dev.directIo('write', 0, 10, () => new Promise<void>((r) => setTimeout(() => ((finished = true), r()), 100)));
    await dev.close();
    assert.equal(finished, true, 'close waited');
    await slow;
  } finally {
    cleanup();
  }
});
