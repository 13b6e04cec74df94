import { test } from 'node:test';
import assert from 'node:assert/strict';
import { constants, readdirSync, readlinkSync, statSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DIRECT_IO_ALIGNMENT, FileDevice, removeFile, renameDurably, statPath } from '../../src/devices/file-device.js';
import { allocateAligned } from '../../src/native-addon.js';
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

/** The flags (from /proc/self/fdinfo) of every descriptor of this process open on `path`. */
function openFlags(path: string): number[] {
  const flags: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target = '';
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed meanwhile (the readdir's own descriptor)
    }
    if (target !== path) continue;
    const line = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8').split('\n').find((l) => l.startsWith('flags:'));
    flags.push(Number.parseInt(line!.split(/\s+/)[1]!, 8));
  }
  return flags;
}

test('bypassCache: aligned writes go with O_DIRECT, the rest through the page cache, and everything reads back', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const path = join(dir, 'direct');
    const size = 1 << 20;
    const shadow = new Uint8Array(size);
    const dev = await FileDevice.open(path, { create: true, size, bypassCache: true });
    assert.equal(dev.cacheBypass.unavailable, undefined);
    assert.ok(openFlags(path).some((f) => (f & constants.O_DIRECT) !== 0), 'an O_DIRECT descriptor is open');
    const put = async (data: Uint8Array, offset: number) => {
      await dev.write(data, offset);
      shadow.set(data, offset);
    };
    const aligned = allocateAligned(3 * DIRECT_IO_ALIGNMENT, DIRECT_IO_ALIGNMENT).view;
    aligned.set(randomBytes(aligned.length));
    await put(aligned, 4 * DIRECT_IO_ALIGNMENT);
    assert.deepEqual(dev.cacheBypass, { bytes: aligned.length, cachedBytes: 0 });
    // Misaligned offset, length or memory: through the cache.
    await put(new Uint8Array(randomBytes(DIRECT_IO_ALIGNMENT)), 100);
    await put(aligned.subarray(0, 1000), 2 * DIRECT_IO_ALIGNMENT);
    const offByOne = allocateAligned(DIRECT_IO_ALIGNMENT + 512, DIRECT_IO_ALIGNMENT).view.subarray(512);
    offByOne.fill(9);
    await put(offByOne, 8 * DIRECT_IO_ALIGNMENT);
    assert.deepEqual(dev.cacheBypass, { bytes: aligned.length, cachedBytes: 2 * DIRECT_IO_ALIGNMENT + 1000 });
    // A cached write over bytes written directly, then a direct write over cached ones: the kernel keeps them coherent.
    await put(new Uint8Array(10).fill(1), 4 * DIRECT_IO_ALIGNMENT + 5);
    await put(aligned.subarray(0, DIRECT_IO_ALIGNMENT), 0);
    const back = new Uint8Array(size);
    await dev.read(back, 0);
    assert.deepEqual(Buffer.from(back), Buffer.from(shadow));
    await dev.flush();
    await dev.close();
    assert.deepEqual(openFlags(path), [], 'both descriptors are closed');
    assert.deepEqual(Buffer.from(readFileSync(path)), Buffer.from(shadow));
    // Without the option there is one descriptor, without O_DIRECT, and every byte is cached.
    const plain = await FileDevice.open(path, {});
    assert.deepEqual(openFlags(path).map((f) => f & constants.O_DIRECT), [0]);
    await plain.write(aligned, 0);
    assert.deepEqual(plain.cacheBypass, { bytes: 0, cachedBytes: aligned.length });
    await plain.close();
  } finally {
    cleanup();
  }
});

test('bypassCache: a device that refuses O_DIRECT writes (EINVAL) is written through the page cache from then on', async () => {
  const { dir, cleanup } = tempDir();
  const probe = await FileDevice.open(join(dir, 'probe'), { create: true, size: 0 });
  await probe.close();
  // Make every write on an O_DIRECT descriptor fail as a device with a larger block size would.
  const { promises } = await import('node:fs');
  const handle = await promises.open(join(dir, 'probe'), 'r');
  const proto = Object.getPrototypeOf(handle) as { write: (...args: unknown[]) => Promise<unknown> };
  await handle.close();
  const write = proto.write;
  let refused = 0;
  proto.write = function (this: { fd: number }, ...args: unknown[]) {
    const flags = readFileSync(`/proc/self/fdinfo/${this.fd}`, 'utf8').split('\n').find((l) => l.startsWith('flags:'))!;
    if ((Number.parseInt(flags.split(/\s+/)[1]!, 8) & constants.O_DIRECT) !== 0) {
      refused++;
      return Promise.reject(Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL' }));
    }
    return write.apply(this, args);
  };
  try {
    const path = join(dir, 'refusing');
    const dev = await FileDevice.open(path, { create: true, size: 1 << 20, bypassCache: true });
    const pieces = [0, 1, 2, 3].map(() => {
      const v = allocateAligned(64 * 1024, DIRECT_IO_ALIGNMENT).view;
      v.set(randomBytes(v.length));
      return v;
    });
    // Several at once, as the pipeline issues them: each either fails over or never tries.
    await Promise.all(pieces.map((p, i) => dev.write(p, i * p.length)));
    await dev.write(pieces[0]!, 8 * 65536);
    assert.ok(refused >= 1 && refused <= 4, `refused ${refused}`);
    assert.deepEqual({ ...dev.cacheBypass, unavailable: undefined }, { bytes: 0, cachedBytes: 5 * 65536, unavailable: undefined });
    assert.match(dev.cacheBypass.unavailable ?? '', /EINVAL/);
    const back = new Uint8Array(5 * 65536);
    await dev.read(back.subarray(0, 4 * 65536), 0);
    await dev.read(back.subarray(4 * 65536), 8 * 65536);
    assert.deepEqual(Buffer.from(back), Buffer.concat([...pieces, pieces[0]!]));
    await dev.close();
    assert.deepEqual(openFlags(path), [], 'both descriptors are closed');
  } finally {
    proto.write = write;
    cleanup();
  }
});
