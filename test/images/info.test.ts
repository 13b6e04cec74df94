/** `brickcrypt info` and imageInfo() agree with `qemu-img info --output=json` (and cryptsetup for LUKS2). */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { needTools, run, runQemuImgLuks, runCli, tempDir } from '../helpers/tools.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { imageInfo, type ImageInfo } from '../../src/images/image-info.js';
import { inspectQcow2 } from '../../src/images/qcow2-device.js';
import { Qcow2Writer } from '../../src/images/qcow2-writer.js';
import { makeDisk, writeDisk } from '../qcow2/fixtures.js';

let tmp: { dir: string; cleanup: () => void };
let rawPath: string;
const disk = makeDisk(3 * 1024 * 1024, 21);
before(() => {
  tmp = tempDir('brickcrypt-info-');
  rawPath = join(tmp.dir, 'disk.raw');
  writeDisk(rawPath, disk);
});
after(() => tmp.cleanup());

type QemuInfo = Record<string, unknown> & { 'format-specific'?: { type: string; data: Record<string, unknown> } };
const qemuInfo = (path: string): QemuInfo => JSON.parse(run('qemu-img', ['info', '--output=json', path])) as QemuInfo;

/** Every field both report must agree. */
function compareQcow2(ours: ImageInfo, theirs: QemuInfo): void {
  for (const key of ['format', 'virtual-size', 'cluster-size', 'actual-size', 'dirty-flag', 'backing-filename', 'backing-filename-format', 'encrypted'] as const) {
    assert.equal(ours[key], theirs[key], key);
  }
  const data = theirs['format-specific']!.data;
  const mine = ours['format-specific']!.data as unknown as Record<string, unknown>;
  for (const key of ['compat', 'compression-type', 'lazy-refcounts', 'refcount-bits', 'corrupt', 'extended-l2']) {
    assert.equal(mine[key], data[key], `format-specific ${key}`);
  }
}

const qcowCases: Array<{ name: string; make: (out: string) => unknown }> = [
  { name: 'v2', make: (o) => run('qemu-img', ['convert', '-O', 'qcow2', '-o', 'compat=0.10', rawPath, o]) },
  { name: 'v3 zstd compressed, extended L2, 32 KiB clusters', make: (o) => run('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd,extended_l2=on,cluster_size=32k', rawPath, o]) },
  { name: 'lazy refcounts, refcount_bits=8', make: (o) => run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,refcount_bits=8', o, '5G']) },
  {
    name: 'overlay with backing file',
    make: (o) => run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', rawPath, '-F', 'raw', o]),
  },
  {
    name: 'written by Qcow2Writer',
    make: async (o) => {
      const w = await Qcow2Writer.create(await FileDevice.open(o, { create: true, size: 0 }), { size: disk.length, compress: true });
      await w.write(disk, 0);
      await w.close();
    },
  },
];

for (const c of qcowCases) {
  test(`info ${c.name} matches qemu-img info`, { skip: needTools('qemu-img') }, async () => {
    const out = join(tmp.dir, c.name.replace(/\W+/g, '_') + '.qcow2');
    await c.make(out);
    compareQcow2(await imageInfo(out), qemuInfo(out));
  });
}

test('info on a dirty qcow2 reports the dirty flag like qemu-img', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'dirty.qcow2');
  run('qemu-img', ['convert', '-O', 'qcow2', rawPath, out]);
  const f = await FileDevice.open(out);
  await f.write(Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 1), 72);
  await f.close();
  const ours = await imageInfo(out);
  assert.equal(ours['dirty-flag'], true);
  compareQcow2(ours, qemuInfo(out));
});

test('info on raw matches qemu-img info', { skip: needTools('qemu-img') }, async () => {
  const ours = await imageInfo(rawPath);
  const theirs = qemuInfo(rawPath);
  for (const key of ['format', 'virtual-size', 'actual-size', 'dirty-flag'] as const) assert.equal(ours[key], theirs[key], key);
});

test('info on a LUKS-encrypted qcow2 says encrypted without a passphrase', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'enc.qcow2');
  runQemuImgLuks([
    'create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=pass',
    '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100', out, '8M',
  ]);
  const ours = await imageInfo(out);
  assert.equal(ours.encrypted, true);
  compareQcow2(ours, qemuInfo(out));
  const f = await FileDevice.open(out, { readOnly: true });
  const { extras } = await inspectQcow2(f);
  await f.close();
  // The full-disk-encryption header extension points at the LUKS header inside the image.
  assert.ok(extras.cryptoHeader && extras.cryptoHeader.offset % 65536 === 0 && extras.cryptoHeader.length > 592);
});

test('info on LUKS1 matches qemu-img info (luks driver)', { skip: needTools('qemu-img', 'cryptsetup') }, async () => {
  const luks = join(tmp.dir, 'vol1.luks');
  writeFileSync(luks, new Uint8Array(0));
  run('truncate', ['-s', '6M', luks]);
  run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '--key-file', '-', luks], { input: 'pw' });
  const ours = await imageInfo(luks);
  const theirs = qemuInfo(luks);
  assert.equal(theirs['format'], 'luks');
  assert.equal(ours.format, 'luks1');
  assert.equal(ours['virtual-size'], theirs['virtual-size']);
  assert.equal(ours['actual-size'], theirs['actual-size']);
  assert.equal(ours.encrypted, true);
  const data = ours['format-specific']!.data as unknown as Record<string, unknown>;
  const q = theirs['format-specific']!.data;
  assert.equal(data['payload-offset'], q['payload-offset']);
  assert.equal(data['uuid'], q['uuid']);
  assert.equal(data['cipher'], `${String(q['cipher-alg']).split('-')[0]}-${q['cipher-mode']}-${q['ivgen-alg']}`);
});

test('info on LUKS2 matches cryptsetup luksDump', { skip: needTools('cryptsetup') }, async () => {
  const luks = join(tmp.dir, 'vol2.luks');
  writeFileSync(luks, new Uint8Array(0));
  run('truncate', ['-s', '20M', luks]);
  run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--sector-size', '4096', '--key-file', '-', luks], { input: 'pw' });
  const dump = run('cryptsetup', ['luksDump', luks]);
  const ours = await imageInfo(luks);
  assert.equal(ours.format, 'luks2');
  const data = ours['format-specific']!.data as unknown as Record<string, unknown>;
  assert.equal(data['version'], 2);
  assert.equal(data['uuid'], /UUID:\s+(\S+)/.exec(dump)![1]);
  assert.equal(data['cipher'], /cipher:\s+(\S+)/.exec(dump)![1]);
  assert.equal(data['sector-size'], Number(/sector:\s+(\d+)/.exec(dump)![1]));
  assert.equal(data['payload-offset'], Number(/offset:\s+(\d+) \[bytes\]/.exec(dump)![1]));
  assert.equal(ours['virtual-size'], 20 * 1024 * 1024 - Number(data['payload-offset']));
});

test('brickcrypt info CLI: JSON equals imageInfo(), text names the format, errors are typed', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'cli.qcow2');
  run('qemu-img', ['convert', '-O', 'qcow2', '-o', 'cluster_size=128k', rawPath, out]);
  const json = runCli(['info', '--json', out]);
  assert.equal(json.status, 0, json.stderr);
  assert.deepEqual(JSON.parse(json.stdout), JSON.parse(JSON.stringify(await imageInfo(out))));
  const text = runCli(['info', out]);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /file format: qcow2/);
  assert.match(text.stdout, /virtual size: 3 MiB \(3145728 bytes\)/);
  assert.match(text.stdout, /cluster_size: 131072/);
  const missing = runCli(['info', join(tmp.dir, 'nope.img')]);
  assert.equal(missing.status, 4);
  assert.match(missing.stderr, /brickcrypt: error NOT_FOUND/);
  const broken = join(tmp.dir, 'broken.qcow2');
  writeFileSync(broken, Uint8Array.of(0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3));
  const bad = runCli(['info', broken]);
  assert.equal(bad.status, 4);
  assert.match(bad.stderr, /error CORRUPT_HEADER/);
});
