/** Format detection by content, openImage, and zero-run helpers. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, writeFileSync } from 'node:fs';
import { needTools, run, tempDir } from '../helpers/tools.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { detectFormat, detectFormatFromBytes } from '../../src/images/detect.js';
import { openImage } from '../../src/images/open-image.js';
import { Qcow2Device } from '../../src/images/qcow2-device.js';
import { isAllZero, zeroRuns } from '../../src/images/zero-runs.js';
import { BackingFileRequiredError, InvalidArgumentError, UnknownFormatError, UnsupportedError } from '../../src/errors.js';
import { makeDisk, readAll, sha256, writeDisk } from '../qcow2/fixtures.js';

const bytes = (...b: number[]) => Uint8Array.from(b);
const vectors: Array<[string, Uint8Array, string]> = [
  ['LUKS1 magic', bytes(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 1, 0x61), 'luks1'],
  ['LUKS2 magic', bytes(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 2), 'luks2'],
  ['LUKS magic, version 3', bytes(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 3), 'raw'],
  ['LUKS2 secondary magic at 0', bytes(0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe, 0, 2), 'raw'],
  ['qcow2 magic', bytes(0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3), 'qcow2'],
  ['qcow (v1) is not qcow2 magic', bytes(0x51, 0x46, 0x49, 0xfa, 0, 0, 0, 1), 'raw'],
  ['short qcow2 magic only', bytes(0x51, 0x46, 0x49, 0xfb), 'qcow2'],
  ['empty', bytes(), 'raw'],
  ['zeros', new Uint8Array(512), 'raw'],
  ['text', new TextEncoder().encode('QFI is a name, not a magic'), 'raw'],
];

for (const [name, head, expected] of vectors) {
  test(`detectFormat: ${name} -> ${expected}`, async () => {
    assert.equal(detectFormatFromBytes(head), expected);
    assert.equal(await detectFormat(new MemoryDevice(head)), expected);
  });
}

let tmp: { dir: string; cleanup: () => void };
let rawPath: string;
let disk: Uint8Array;
before(() => {
  tmp = tempDir('brickcrypt-images-');
  rawPath = join(tmp.dir, 'disk.raw');
  disk = makeDisk(2 * 1024 * 1024, 3);
  writeDisk(rawPath, disk);
});
after(() => tmp.cleanup());

test('openImage: detection ignores the file name', { skip: needTools('qemu-img') }, async () => {
  // A qcow2 named .raw and a raw named .qcow2.
  const qcowNamedRaw = join(tmp.dir, 'looks.raw');
  run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', rawPath, qcowNamedRaw]);
  const rawNamedQcow = join(tmp.dir, 'looks.qcow2');
  copyFileSync(rawPath, rawNamedQcow);

  const q = await openImage(qcowNamedRaw);
  assert.equal(q.format, 'qcow2');
  assert.ok(q.device instanceof Qcow2Device);
  assert.equal(q.device.size, disk.length);
  assert.equal(sha256(await readAll(q.device)), sha256(disk));
  await q.close();

  const r = await openImage(rawNamedQcow);
  assert.equal(r.format, 'raw');
  assert.equal(r.device, r.file);
  assert.equal(sha256(await readAll(r.device)), sha256(disk));
  await r.close();

  // Forcing raw gives the container bytes; asking for the wrong format is refused.
  const forced = await openImage(qcowNamedRaw, { format: 'raw' });
  assert.equal(forced.format, 'raw');
  assert.notEqual(forced.device.size, disk.length);
  await forced.close();
  await assert.rejects(openImage(rawNamedQcow, { format: 'qcow2' }), UnknownFormatError);
  await assert.rejects(openImage(rawNamedQcow, { format: 'luks' }), UnknownFormatError);
  await assert.rejects(openImage(qcowNamedRaw, { readOnly: false }), UnsupportedError);
  await assert.rejects(openImage(rawNamedQcow, { backing: rawPath }), InvalidArgumentError);
});

test('openImage: backing by path or device; refused without', { skip: needTools('qemu-img', 'qemu-io') }, async () => {
  const overlay = join(tmp.dir, 'overlay.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', rawPath, '-F', 'raw', overlay]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 4k', overlay]);
  const expected = disk.slice();
  expected.fill(0x77, 0, 4096);
  await assert.rejects(openImage(overlay), BackingFileRequiredError);
  const byPath = await openImage(overlay, { backing: rawPath });
  assert.equal(sha256(await readAll(byPath.device)), sha256(expected));
  await byPath.close();
  const base = await FileDevice.open(rawPath, { readOnly: true });
  const byDevice = await openImage(overlay, { backing: base });
  assert.equal(sha256(await readAll(byDevice.device)), sha256(expected));
  await byDevice.close();
  // The caller keeps ownership of a backing device it passed.
  const probe = new Uint8Array(16);
  await base.read(probe, 0);
  await base.close();
});

test('openImage: LUKS files open as the raw container', { skip: needTools('cryptsetup') }, async () => {
  const luks = join(tmp.dir, 'vol.luks');
  writeFileSync(luks, new Uint8Array(0));
  run('truncate', ['-s', '4M', luks]);
  run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '--key-file', '-', luks], { input: 'pw' });
  const img = await openImage(luks);
  assert.equal(img.format, 'luks1');
  assert.equal(img.device.size, 4 * 1024 * 1024);
  await img.close();
  const asLuks = await openImage(luks, { format: 'luks' });
  assert.equal(asLuks.format, 'luks1');
  await asLuks.close();
});

test('isAllZero and zeroRuns', () => {
  const buf = new Uint8Array(3 * 1024 * 1024 + 100);
  assert.equal(isAllZero(buf), true);
  assert.equal(isAllZero(new Uint8Array(0)), true);
  buf[3 * 1024 * 1024 + 99] = 1;
  assert.equal(isAllZero(buf), false);
  assert.equal(isAllZero(buf.subarray(0, 3 * 1024 * 1024)), true);
  const b = new Uint8Array(10_000);
  b[5000] = 7;
  assert.deepEqual(zeroRuns(b, 4096), [
    { offset: 0, length: 4096, zero: true },
    { offset: 4096, length: 4096, zero: false },
    { offset: 8192, length: 10_000 - 8192, zero: true },
  ]);
  assert.deepEqual(zeroRuns(new Uint8Array(0)), []);
  assert.throws(() => zeroRuns(b, 0), RangeError);
});
