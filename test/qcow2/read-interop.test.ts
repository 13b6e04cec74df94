/**
 * qcow2 images made by qemu-img/qemu-io read back byte-exact through Qcow2Device,
 * across versions, compression types, cluster sizes, extended L2 and zero clusters.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { needTools, run, tempDir } from '../helpers/tools.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { Qcow2Device } from '../../src/images/qcow2-device.js';
import { makeDisk, readAll, sha256, writeDisk } from './fixtures.js';

// 4 MiB + 3 sectors: not a multiple of any cluster size, but of 512 (qemu rounds sizes to sectors).
const SIZE = 4 * 1024 * 1024 + 3 * 512;
let tmp: { dir: string; cleanup: () => void };
let rawPath: string;
let disk: Uint8Array;

before(() => {
  tmp = tempDir('brickcrypt-qcow2-read-');
  rawPath = join(tmp.dir, 'disk.raw');
  disk = makeDisk(SIZE, 7);
  writeDisk(rawPath, disk);
});
after(() => tmp.cleanup());

async function openQcow(path: string, options: { backing?: FileDevice } = {}): Promise<{ dev: Qcow2Device; file: FileDevice }> {
  const file = await FileDevice.open(path, { readOnly: true });
  return { dev: await Qcow2Device.open(file, options), file };
}

/** Reads the whole disk, spot-checks odd-sized reads across cluster edges, and checks extents against the data. */
async function checkImage(path: string, expected: Uint8Array, clusterSize: number, expectHoles = true): Promise<void> {
  const { dev, file } = await openQcow(path);
  try {
    assert.equal(dev.size, expected.length);
    assert.equal(dev.clusterSize, clusterSize);
    assert.equal(sha256(await readAll(dev, 1024 * 1024 + 512)), sha256(expected));
    for (const [off, len] of [
      [clusterSize - 7, 19],
      [3 * clusterSize - 100, 2 * clusterSize + 300],
      [expected.length - 1000, 1000],
      [12345, 1],
    ] as const) {
      if (off < 0 || off + len > expected.length) continue;
      const buf = new Uint8Array(len);
      await dev.read(buf, off);
      assert.deepEqual(Buffer.from(buf), Buffer.from(expected.subarray(off, off + len)), `read ${off}+${len}`);
    }
    const extents = await dev.extents(0, dev.size);
    let covered = 0;
    let holes = 0;
    for (const e of extents) {
      assert.equal(e.offset, covered);
      covered += e.length;
      if (e.zero) assert.ok(expected.subarray(e.offset, e.offset + e.length).every((b) => b === 0), `extent ${e.offset}+${e.length} reported zero`);
      if (e.hole) holes += e.length;
    }
    assert.equal(covered, dev.size);
    if (expectHoles) assert.ok(holes > 0, 'the zero stretches are reported as holes');
    else assert.equal(holes, 0, 'preallocated clusters are not holes');
  } finally {
    await dev.close();
    await file.close();
  }
}

const cases: Array<{ name: string; args: string[]; clusterSize: number; preallocated?: boolean }> = [
  { name: 'v2 (compat=0.10)', args: ['-o', 'compat=0.10'], clusterSize: 65536 },
  { name: 'v3 default', args: [], clusterSize: 65536 },
  { name: 'v3 deflate-compressed', args: ['-c'], clusterSize: 65536 },
  { name: 'v2 deflate-compressed', args: ['-c', '-o', 'compat=0.10'], clusterSize: 65536 },
  { name: 'v3 zstd-compressed', args: ['-c', '-o', 'compression_type=zstd'], clusterSize: 65536 },
  { name: 'extended L2', args: ['-o', 'extended_l2=on'], clusterSize: 65536 },
  { name: 'extended L2 compressed zstd', args: ['-c', '-o', 'extended_l2=on,compression_type=zstd'], clusterSize: 65536 },
  { name: '512-byte clusters', args: ['-o', 'cluster_size=512'], clusterSize: 512 },
  { name: '512-byte clusters compressed', args: ['-c', '-o', 'cluster_size=512'], clusterSize: 512 },
  { name: '2 MiB clusters', args: ['-o', 'cluster_size=2M'], clusterSize: 2 * 1024 * 1024 },
  { name: '2 MiB clusters compressed', args: ['-c', '-o', 'cluster_size=2M'], clusterSize: 2 * 1024 * 1024 },
  { name: 'preallocation=metadata', args: ['-o', 'preallocation=metadata'], clusterSize: 65536, preallocated: true },
];

for (const c of cases) {
  test(`qemu-img convert ${c.name} reads back identical`, { skip: needTools('qemu-img') }, async () => {
    const out = join(tmp.dir, `${c.name.replace(/\W+/g, '_')}.qcow2`);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', ...c.args, rawPath, out]);
    await checkImage(out, disk, c.clusterSize, !c.preallocated);
  });
}

test('zero clusters (qemu-io write -z, with and without unmap) read as zeros', { skip: needTools('qemu-img', 'qemu-io') }, async () => {
  const out = join(tmp.dir, 'zeroes.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, out]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -z 0 256k', '-c', 'write -z -u 1M 128k', '-c', 'write -P 0x5a 2M 4k', out]);
  const expected = disk.slice();
  expected.fill(0, 0, 256 * 1024);
  expected.fill(0, 1024 * 1024, 1024 * 1024 + 128 * 1024);
  expected.fill(0x5a, 2 * 1024 * 1024, 2 * 1024 * 1024 + 4096);
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', out])) as Array<{ start: number; zero: boolean; data: boolean }>;
  assert.ok(map.some((m) => m.start === 0 && m.zero && !m.data), 'qemu reports the zero-flag clusters');
  await checkImage(out, expected, 65536);
  const { dev, file } = await openQcow(out);
  const ext = await dev.extents(0, 256 * 1024);
  assert.deepEqual(ext.map((e) => e.zero), [true]);
  await dev.close();
  await file.close();
});

test('extended L2 subclusters: partial allocation and zeroed subclusters', { skip: needTools('qemu-img', 'qemu-io') }, async () => {
  const out = join(tmp.dir, 'subclusters.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', out, '1M']);
  // 2 KiB subclusters: allocate a few in the middle of cluster 0, zero one, leave the rest unallocated.
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 6k 10k', '-c', 'write -z 8k 2k', '-c', 'write -P 0xcd 70k 1k', out]);
  const expected = new Uint8Array(1024 * 1024);
  expected.fill(0xab, 6 * 1024, 16 * 1024);
  expected.fill(0, 8 * 1024, 10 * 1024);
  expected.fill(0xcd, 70 * 1024, 71 * 1024);
  const { dev, file } = await openQcow(out);
  try {
    assert.equal(sha256(await readAll(dev, 3000)), sha256(expected));
    const ext = await dev.extents(0, 64 * 1024);
    assert.deepEqual(ext[0], { offset: 0, length: 6 * 1024, hole: true, zero: true });
    assert.ok(ext.some((e) => !e.hole && e.offset === 6 * 1024));
  } finally {
    await dev.close();
    await file.close();
  }
});

test('a qcow2 with a backing file reads through to the backing image', { skip: needTools('qemu-img', 'qemu-io') }, async () => {
  const base = join(tmp.dir, 'base.qcow2');
  const overlay = join(tmp.dir, 'overlay.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, base]);
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay, String(SIZE + 65536)]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 64k 64k', '-c', 'write -z 512k 64k', overlay]);
  const expected = new Uint8Array(SIZE + 65536);
  expected.set(disk);
  expected.fill(0x11, 65536, 131072);
  expected.fill(0, 512 * 1024, 576 * 1024);
  const baseFile = await FileDevice.open(base, { readOnly: true });
  const baseDev = await Qcow2Device.open(baseFile);
  const { dev, file } = await openQcow(overlay, { backing: baseDev as unknown as FileDevice });
  try {
    assert.equal(dev.backingFile, base);
    assert.equal(sha256(await readAll(dev)), sha256(expected));
    const whole = run('qemu-img', ['convert', '-O', 'raw', overlay, join(tmp.dir, 'overlay.raw')]);
    assert.equal(whole, '');
    assert.equal(sha256(new Uint8Array(readFileSync(join(tmp.dir, 'overlay.raw')))), sha256(expected));
  } finally {
    await dev.close();
    await file.close();
    await baseDev.close();
    await baseFile.close();
  }
});

test('a tiny L2 cache (many 512-byte-cluster L2 tables) still reads right, in any order', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'tiny-cache.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=512', rawPath, out]);
  const file = await FileDevice.open(out, { readOnly: true });
  const dev = await Qcow2Device.open(file, { l2CacheBytes: 0 });
  // 64 guest KiB per L2 table: jump between distant tables so entries are evicted and reloaded.
  const chunk = 48 * 1024;
  const order = [...Array(Math.ceil(SIZE / chunk)).keys()].map((i) => (i * 37) % Math.ceil(SIZE / chunk));
  const buf = new Uint8Array(SIZE);
  await Promise.all(order.map((i) => dev.read(buf.subarray(i * chunk, Math.min(SIZE, (i + 1) * chunk)), i * chunk)));
  assert.equal(sha256(buf), sha256(disk));
  await dev.close();
  await file.close();
});

test('sequential reads of contiguous clusters are batched into few host reads', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'batched.qcow2');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, out]);
  const file = await FileDevice.open(out, { readOnly: true });
  let reads = 0;
  const counting = new Proxy(file, {
    get(target, prop) {
      if (prop === 'read') return (buf: Uint8Array, off: number) => { reads++; return target.read(buf, off); };
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const dev = await Qcow2Device.open(counting);
  reads = 0;
  const buf = new Uint8Array(SIZE);
  await dev.read(buf, 0);
  assert.equal(sha256(buf), sha256(disk));
  // qemu-img convert lays data clusters out in guest order: one read per data run plus one L2 table.
  const dataRuns = (await dev.extents(0, SIZE)).filter((e) => !e.hole).length;
  assert.ok(reads <= dataRuns + 2, `${reads} host reads for ${dataRuns} data runs`);
  await dev.close();
  await file.close();
});
