/**
 * qcow2 written front to back (tables first, then data): clean under qemu-img check, equal to
 * the source, zero clusters unallocated, for sizes that are not cluster multiples and data
 * spread over several L2 tables; compressed (deflate) images packed the way qemu-img -c packs them.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { needTools, run } from '../helpers/tools.js';
import { planQcow2Stream } from '../../src/images/qcow2-stream-layout.js';
import { ClusterScanDevice, Qcow2StreamDevice } from '../../src/images/qcow2-stream-device.js';
import { UploadStreamDevice } from '../../src/image-service/upload-stream-device.js';
import { IntegrityError } from '../../src/errors.js';
import { copyData } from '../../src/workflows/pipeline.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { Qcow2Device } from '../../src/images/qcow2-device.js';
import { CryptoPool } from '../../src/workflows/worker-pool.js';

const dir = mkdtempSync(join(tmpdir(), 'brickcrypt-qcow2-stream-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** Streams `data` as qcow2 (two passes through the pipeline) and returns the file bytes. */
async function streamQcow2(data: Uint8Array, clusterBits = 16, compressionLevel?: number): Promise<Buffer> {
  const pool = CryptoPool.create(0);
  try {
    const src = new MemoryDevice(data.length);
    await src.write(data, 0);
    const source = { device: src, base: 0, size: data.length };
    const scan = new ClusterScanDevice(data.length, { clusterSize: 2 ** clusterBits, ...(compressionLevel ? { compressionLevel } : {}) });
    await copyData(source, { device: scan, base: 0, zeros: 'skip' }, data.length, { pool, chunkBytes: 1 << 20 });
    const plan = planQcow2Stream(data.length, scan.allocated, clusterBits, await scan.storedLengths());
    const sink = new UploadStreamDevice(plan.fileSize);
    const parts: Uint8Array[] = [];
    const reading = (async () => {
      for await (const c of sink.body()) parts.push(c);
    })();
    const q = new Qcow2StreamDevice(plan, sink, compressionLevel ? { compressionLevel } : {});
    await q.start();
    await copyData(source, { device: q, base: 0, zeros: 'skip' }, data.length, { pool, chunkBytes: 1 << 20 });
    await q.finish();
    sink.end();
    await reading;
    return Buffer.concat(parts);
  } finally {
    await pool.close();
  }
}

const CASES: Array<{ name: string; size: number; data: Array<[number, number]>; clusterBits?: number }> = [
  { name: 'aligned, data at both ends', size: 8 << 20, data: [[0, 1 << 20], [7 << 20, 1 << 20]] },
  { name: 'size not a cluster multiple, partial clusters', size: (5 << 20) + 12800, data: [[4096, 5000], [3 << 20, 70000], [(5 << 20) + 12000, 345]] },
  { name: 'several L2 tables (4 KiB clusters)', size: 24 << 20, data: [[0, 4096], [9 << 20, 300000], [(24 << 20) - 8192, 8192]], clusterBits: 12 },
  { name: 'all zeros', size: 3 << 20, data: [] },
];

for (const c of CASES) {
  test(`streamed qcow2 is clean and equal: ${c.name}`, { skip: needTools('qemu-img') }, async () => {
    const data = new Uint8Array(c.size);
    for (const [at, len] of c.data) data.set(randomBytes(len), at);
    const image = await streamQcow2(data, c.clusterBits);
    const raw = join(dir, `${c.name.replace(/\W+/g, '-')}.raw`);
    const q = raw.replace(/\.raw$/, '.qcow2');
    writeFileSync(raw, data);
    writeFileSync(q, image);
    run('qemu-img', ['check', q]);
    run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, q]);
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', q])) as { 'virtual-size': number; 'actual-size': number };
    assert.equal(info['virtual-size'], c.size);
    const map = JSON.parse(run('qemu-img', ['map', '--output=json', q])) as Array<{ length: number; data: boolean }>;
    const mapped = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
    const cs = 2 ** (c.clusterBits ?? 16);
    assert.ok(mapped <= c.data.reduce((n, [, len]) => n + Math.ceil(len / cs + 1) * cs, 0), `only data clusters are allocated (${mapped} bytes)`);
  });
}

test('a second pass that sees different data is an IntegrityError', async () => {
  const plan = planQcow2Stream(1 << 20, Uint8Array.from({ length: 16 }, (_, i) => (i === 2 ? 1 : 0)));
  const q = new Qcow2StreamDevice(plan, new UploadStreamDevice(plan.fileSize, { maxQueued: 100 }));
  await q.start();
  await assert.rejects(q.write(new Uint8Array(10), 5 * 65536), IntegrityError);
  const q2 = new Qcow2StreamDevice(plan, new UploadStreamDevice(plan.fileSize, { maxQueued: 100 }));
  await q2.start();
  await assert.rejects(q2.finish(), IntegrityError);
});

/** Text-like bytes that deflate well, with random (incompressible) stretches between. */
function mixedData(size: number): Uint8Array {
  const data = new Uint8Array(size);
  const line = new TextEncoder().encode('brickcrypt compressed qcow2 stream line 0123456789\n');
  for (let at = 0; at < size / 2; at += line.length) data.set(line.subarray(0, Math.min(line.length, size / 2 - at)), at);
  data.set(randomBytes(300000), size / 2 + 65536 + 1000);
  data.set(randomBytes(777), size - 5000);
  return data;
}

for (const clusterBits of [16, 12]) {
  test(`compressed streamed qcow2 (${2 ** clusterBits}-byte clusters) is clean, equal, smaller, and reads back here`, { skip: needTools('qemu-img') }, async () => {
    const size = 6 << 20;
    const data = mixedData(size);
    const image = await streamQcow2(data, clusterBits, 6);
    const plain = await streamQcow2(data, clusterBits);
    assert.ok(image.length < plain.length * 0.7, `compressed ${image.length} bytes, uncompressed ${plain.length}`);
    const raw = join(dir, `mixed-${clusterBits}.raw`);
    const q = join(dir, `mixed-${clusterBits}.qcow2`);
    writeFileSync(raw, data);
    writeFileSync(q, image);
    run('qemu-img', ['check', q]);
    run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw, q]);
    const dev = await Qcow2Device.open(new MemoryDevice(new Uint8Array(image), true));
    const back = new Uint8Array(size);
    await dev.read(back, 0);
    assert.ok(Buffer.from(back).equals(Buffer.from(data)), 'our qcow2 reader gives the same bytes');
  });
}

test('compressed stream: a cluster that compresses differently in the second pass is an IntegrityError', async () => {
  const cs = 65536;
  const scan = new ClusterScanDevice(1 << 20, { compressionLevel: 6 });
  await scan.write(new Uint8Array(cs).fill(7), 2 * cs);
  const plan = planQcow2Stream(1 << 20, scan.allocated, 16, await scan.storedLengths());
  assert.ok((plan.storedLengths?.[0] ?? 0) > 0);
  const q = new Qcow2StreamDevice(plan, new UploadStreamDevice(plan.fileSize, { maxQueued: 100 }), { compressionLevel: 6 });
  await q.start();
  await q.write(randomBytes(cs), 2 * cs);
  await assert.rejects(q.finish(), IntegrityError);
});
