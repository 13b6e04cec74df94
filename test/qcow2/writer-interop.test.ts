/**
 * Qcow2Writer output is a clean qcow2 v3 for QEMU: `qemu-img check` finds no errors,
 * `qemu-img compare` matches the source, `qemu-img info` reads the virtual size,
 * zero clusters stay unallocated, and our reader reads it back.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { needTools, run, runStatus, tempDir } from '../helpers/tools.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { SliceDevice } from '../../src/devices/slice-device.js';
import { Qcow2Device } from '../../src/images/qcow2-device.js';
import { Qcow2Writer, type Qcow2WriterOptions } from '../../src/images/qcow2-writer.js';
import { detectFormat } from '../../src/images/detect.js';
import { InsufficientSpaceError, InvalidArgumentError, OutOfRangeError } from '../../src/errors.js';
import { makeDisk, readAll, sha256, writeDisk } from './fixtures.js';

let tmp: { dir: string; cleanup: () => void };
before(() => {
  tmp = tempDir('brickcrypt-qcow2-write-');
});
after(() => tmp.cleanup());

type Plan = Array<[offset: number, length: number]>;

/** Cuts [0,size) into `step`-byte writes. */
function sequential(size: number, step: number): Plan {
  const plan: Plan = [];
  for (let at = 0; at < size; at += step) plan.push([at, Math.min(step, size - at)]);
  return plan;
}

/** Deterministic shuffle. */
function shuffled<T>(items: T[], seed: number): T[] {
  const out = items.slice();
  let s = seed;
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

async function writeImage(path: string, disk: Uint8Array, plan: Plan, options: Omit<Qcow2WriterOptions, 'size'>, before?: (w: Qcow2Writer) => Promise<void>): Promise<void> {
  const file = await FileDevice.open(path, { create: true, size: 0 });
  const writer = await Qcow2Writer.create(file, { size: disk.length, ...options });
  if (before) await before(writer);
  for (const [off, len] of plan) await writer.write(disk.subarray(off, off + len), off);
  await writer.close();
}

function checkWithQemu(path: string, rawPath: string, size: number): void {
  const check = runStatus('qemu-img', ['check', path]);
  assert.equal(check.status, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /No errors were found on the image/);
  const cmp = runStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', rawPath, path]);
  assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
  assert.match(cmp.stdout, /Images are identical/);
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', path])) as Record<string, unknown>;
  assert.equal(info['format'], 'qcow2');
  assert.equal(info['virtual-size'], size);
  assert.equal((info['format-specific'] as { data: { compat: string } }).data.compat, '1.1');
}

async function readBack(path: string): Promise<Uint8Array> {
  const file = await FileDevice.open(path, { readOnly: true });
  const dev = await Qcow2Device.open(file, { ownsFile: true });
  try {
    return await readAll(dev);
  } finally {
    await dev.close();
  }
}

const cases: Array<{ name: string; size: number; plan: (size: number, cs: number) => Plan; options: Omit<Qcow2WriterOptions, 'size'> }> = [
  { name: 'sequential 1 MiB writes', size: 6 * 1024 * 1024, plan: (s) => sequential(s, 1024 * 1024), options: {} },
  { name: 'sequential, deflate-compressed', size: 6 * 1024 * 1024, plan: (s) => sequential(s, 1024 * 1024), options: { compress: true } },
  { name: 'out-of-order cluster writes', size: 4 * 1024 * 1024, plan: (s) => shuffled(sequential(s, 3 * 65536), 3), options: {} },
  { name: 'out-of-order compressed', size: 4 * 1024 * 1024, plan: (s) => shuffled(sequential(s, 65536), 5), options: { compress: true } },
  { name: 'unaligned pieces (partial clusters)', size: 3 * 1024 * 1024, plan: (s) => shuffled(sequential(s, 12_345), 9), options: {} },
  { name: 'non-cluster-multiple size', size: 3 * 1024 * 1024 + 7 * 512, plan: (s) => sequential(s, 100_000), options: { compress: true } },
  { name: 'empty disk', size: 0, plan: () => [], options: {} },
  { name: 'disk smaller than a cluster', size: 1536, plan: (s) => [[1024, s - 1024], [0, 1024]], options: {} },
  { name: '512-byte clusters', size: 1024 * 1024, plan: (s) => sequential(s, 65536), options: { clusterSize: 512 } },
  { name: '512-byte clusters compressed', size: 512 * 1024, plan: (s) => sequential(s, 65536), options: { clusterSize: 512, compress: true } },
  { name: '2 MiB clusters', size: 7 * 1024 * 1024, plan: (s) => shuffled(sequential(s, 1024 * 1024), 2), options: { clusterSize: 2 * 1024 * 1024 } },
  { name: '2 MiB clusters compressed', size: 7 * 1024 * 1024, plan: (s) => sequential(s, 4 * 1024 * 1024), options: { clusterSize: 2 * 1024 * 1024, compress: true } },
];

for (const [i, c] of cases.entries()) {
  test(`Qcow2Writer ${c.name}: qemu-img check clean, compare identical, reads back`, { skip: needTools('qemu-img') }, async () => {
    const disk = makeDisk(c.size, 100 + i);
    const raw = join(tmp.dir, `w${i}.raw`);
    const out = join(tmp.dir, `w${i}.qcow2`);
    writeDisk(raw, disk);
    await writeImage(out, disk, c.plan(c.size, c.options.clusterSize ?? 65536), c.options);
    checkWithQemu(out, raw, c.size);
    assert.equal(sha256(await readBack(out)), sha256(disk));
    if (c.options.compress) {
      const check = run('qemu-img', ['check', out]);
      const m = /(\d+\.\d+)% compressed clusters/.exec(check);
      assert.ok(m && Number(m[1]) > 0, `some clusters are compressed: ${check}`);
    }
  });
}

test('all-zero clusters stay unallocated (qemu-img map)', { skip: needTools('qemu-img') }, async () => {
  const disk = makeDisk(4 * 1024 * 1024, 42);
  const out = join(tmp.dir, 'sparse.qcow2');
  await writeImage(out, disk, sequential(disk.length, 65536), {});
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', out])) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  // makeDisk leaves [3 MiB, 4 MiB) all zeros.
  const tail = map.filter((m) => m.start >= 3 * 1024 * 1024);
  assert.ok(tail.length > 0 && tail.every((m) => !m.data && m.zero), JSON.stringify(tail));
  for (const m of map) {
    if (m.data) continue;
    assert.ok(disk.subarray(m.start, m.start + m.length).every((b) => b === 0));
  }
});

test('overwrites: data replaced, rewritten as zeros (freed), partially patched, compressed or not', { skip: needTools('qemu-img') }, async () => {
  for (const compress of [false, true]) {
    const disk = makeDisk(2 * 1024 * 1024, 77);
    const raw = join(tmp.dir, `over-${compress}.raw`);
    const out = join(tmp.dir, `over-${compress}.qcow2`);
    writeDisk(raw, disk);
    await writeImage(out, disk, sequential(disk.length, 65536), { compress }, async (w) => {
      // Garbage first, then the real data overwrites it; a zero write frees a cluster; a partial patch lands on stored data.
      const junk = new Uint8Array(5 * 65536).fill(0xee);
      await w.write(junk, 0);
      await w.write(junk.subarray(0, 65536), 1024 * 1024);
      await w.writeZeroes(1024 * 1024, 65536);
      await w.write(junk.subarray(0, 1000), 400_000);
      await w.write(new Uint8Array(1000).fill(0x33), 100_000);
      const back = new Uint8Array(2000);
      await w.read(back, 399_000);
      assert.ok(back.subarray(0, 1000).every((b) => b === 0) && back.subarray(1000).every((b) => b === 0xee));
      await w.read(back, 99_000);
      assert.ok(back.subarray(0, 1000).every((b) => b === 0xee) && back.subarray(1000).every((b) => b === 0x33));
    });
    checkWithQemu(out, raw, disk.length);
    assert.equal(sha256(await readBack(out)), sha256(disk));
  }
});

test('until close() the file is not a qcow2 image (no magic)', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'unfinished.qcow2');
  const disk = makeDisk(1024 * 1024, 5);
  // Reuse a file that holds a valid qcow2: its old header must not survive the start of a new write.
  run('qemu-img', ['create', '-q', '-f', 'qcow2', out, '1M']);
  const file = await FileDevice.open(out);
  const writer = await Qcow2Writer.create(file, { size: disk.length });
  await writer.write(disk, 0);
  await writer.flush();
  assert.equal(readFileSync(out).subarray(0, 4).toString('latin1') === 'QFI\xfb', false);
  assert.equal(await detectFormat(file), 'raw');
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', out])) as { format: string };
  assert.equal(info.format, 'raw');
  // Reading back before close works.
  const back = new Uint8Array(disk.length);
  await writer.read(back, 0);
  assert.equal(sha256(back), sha256(disk));
  await writer.close();
  assert.equal(await detectFormat(await FileDevice.open(out, { readOnly: true })), 'qcow2');
});

test('Qcow2Writer argument and range errors are typed', async () => {
  const mem = new MemoryDevice(0);
  // A growable in-memory target works end to end.
  const disk = makeDisk(512 * 1024, 8);
  const inMem = await Qcow2Writer.create(mem, { size: disk.length, compress: true });
  await inMem.write(disk, 0);
  await inMem.close();
  const view = await Qcow2Device.open(new MemoryDevice(mem.bytes, true));
  assert.equal(sha256(await readAll(view)), sha256(disk));

  await assert.rejects(Qcow2Writer.create(mem, { size: 1 << 20, clusterSize: 3000 }), InvalidArgumentError);
  await assert.rejects(Qcow2Writer.create(mem, { size: -1 }), InvalidArgumentError);
  await assert.rejects(Qcow2Writer.create(mem, { size: 2 ** 50, clusterSize: 512 }), InvalidArgumentError);
  const w = await Qcow2Writer.create(new SliceDevice(new MemoryDevice(65536), 0, 65536), { size: 1 << 20 });
  await assert.rejects(w.write(new Uint8Array(10), (1 << 20) - 5), OutOfRangeError);
  // A fixed-size device that cannot grow: typed error instead of a short image.
  await assert.rejects(w.write(new Uint8Array(65536).fill(1), 0), InsufficientSpaceError);
});
