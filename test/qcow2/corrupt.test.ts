/**
 * Damaged and unsupported qcow2 images are refused with typed errors (never a crash,
 * hang or huge allocation); backing files are only read when passed explicitly.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { needTools, run, runQemuImgLuks, tempDir, inCI, whichTool } from '../helpers/tools.js';
import { MemoryDevice } from '../../src/devices/memory-device.js';
import { Qcow2Device } from '../../src/images/qcow2-device.js';
import { BackingFileRequiredError, CorruptHeaderError, InvalidArgumentError, UnsupportedError, WrongPassphraseError } from '../../src/errors.js';
import { Passphrase } from '../../src/secret.js';
import { makeDisk, readAll, sha256, writeDisk } from './fixtures.js';

type Base = 'plain' | 'compressed' | 'zstd' | 'extended';
const SIZE = 1024 * 1024;
const images = new Map<Base, Buffer>();
let tmp: { dir: string; cleanup: () => void };
let disk: Uint8Array;
const haveQemu = whichTool('qemu-img') !== null;

before(() => {
  tmp = tempDir('brickcrypt-qcow2-corrupt-');
  disk = makeDisk(SIZE, 11);
  const raw = join(tmp.dir, 'disk.raw');
  writeDisk(raw, disk);
  if (!haveQemu && !inCI) return;
  const args: Record<Base, string[]> = {
    plain: [],
    compressed: ['-c'],
    zstd: ['-c', '-o', 'compression_type=zstd'],
    extended: ['-o', 'extended_l2=on'],
  };
  for (const [name, extra] of Object.entries(args) as Array<[Base, string[]]>) {
    const out = join(tmp.dir, `${name}.qcow2`);
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', ...extra, raw, out]);
    images.set(name, readFileSync(out));
  }
});
after(() => tmp.cleanup());

/** Where things are in an image, read straight from the bytes (offsets table of qcow2.txt). */
function layout(b: Buffer) {
  const l1 = Number(b.readBigUInt64BE(40));
  const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  return { l1, l2, refcountTable: Number(b.readBigUInt64BE(48)), entry0: b.readBigUInt64BE(l2) };
}

type ErrorClass = new (...args: never[]) => Error;
const corpus: Array<{ name: string; base: Base; mutate: (b: Buffer) => Buffer; error: ErrorClass }> = [
  { name: 'file shorter than a header', base: 'plain', mutate: (b) => b.subarray(0, 60), error: CorruptHeaderError },
  { name: 'file cut inside the L1 table', base: 'plain', mutate: (b) => b.subarray(0, layout(b).l1 + 4), error: CorruptHeaderError },
  { name: 'file cut inside an L2 table', base: 'plain', mutate: (b) => b.subarray(0, layout(b).l2 + 100), error: CorruptHeaderError },
  { name: 'cluster_bits 99', base: 'plain', mutate: (b) => (b.writeUInt32BE(99, 20), b), error: CorruptHeaderError },
  { name: 'cluster_bits 4', base: 'plain', mutate: (b) => (b.writeUInt32BE(4, 20), b), error: CorruptHeaderError },
  { name: 'l1_size 0xffffffff (no 32 GiB allocation)', base: 'plain', mutate: (b) => (b.writeUInt32BE(0xffffffff, 36), b), error: CorruptHeaderError },
  { name: 'l1_size 0 for a 1 MiB disk', base: 'plain', mutate: (b) => (b.writeUInt32BE(0, 36), b), error: CorruptHeaderError },
  { name: 'virtual size 2^62', base: 'plain', mutate: (b) => (b.writeBigUInt64BE(1n << 62n, 24), b), error: CorruptHeaderError },
  { name: 'refcount_order 9', base: 'plain', mutate: (b) => (b.writeUInt32BE(9, 96), b), error: CorruptHeaderError },
  { name: 'header_length past the cluster', base: 'plain', mutate: (b) => (b.writeUInt32BE(70000, 100), b), error: CorruptHeaderError },
  { name: 'unknown incompatible feature bit 20', base: 'plain', mutate: (b) => (b.writeBigUInt64BE(1n << 20n, 72), b), error: UnsupportedError },
  { name: 'external data file bit', base: 'plain', mutate: (b) => (b.writeBigUInt64BE(4n, 72), b), error: UnsupportedError },
  { name: 'legacy AES encryption', base: 'plain', mutate: (b) => (b.writeUInt32BE(1, 32), b), error: UnsupportedError },
  { name: 'version 1', base: 'plain', mutate: (b) => (b.writeUInt32BE(1, 4), b), error: UnsupportedError },
  {
    name: 'L1 entry past EOF',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(0x8000000000000000n | (1n << 40n), layout(b).l1), b),
    error: CorruptHeaderError,
  },
  {
    name: 'L1 entry pointing at the L1 table (loop)',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(BigInt(layout(b).l1), layout(b).l1), b),
    error: CorruptHeaderError,
  },
  {
    name: 'L1 entry pointing at the refcount table',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(BigInt(layout(b).refcountTable), layout(b).l1), b),
    error: CorruptHeaderError,
  },
  {
    name: 'L1 entry not cluster aligned',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(BigInt(layout(b).l2 + 512), layout(b).l1), b),
    error: CorruptHeaderError,
  },
  {
    name: 'data cluster past EOF',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(0x8000000000000000n | (1n << 45n), layout(b).l2), b),
    error: CorruptHeaderError,
  },
  {
    name: 'data cluster not aligned',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(layout(b).entry0 + 0x200n, layout(b).l2), b),
    error: CorruptHeaderError,
  },
  {
    name: 'data cluster overlapping the L1 table',
    base: 'plain',
    mutate: (b) => (b.writeBigUInt64BE(0x8000000000000000n | BigInt(layout(b).l1), layout(b).l2), b),
    error: CorruptHeaderError,
  },
  {
    name: 'compressed descriptor past EOF',
    base: 'compressed',
    mutate: (b) => (b.writeBigUInt64BE((1n << 62n) | BigInt(b.length + 4096), layout(b).l2), b),
    error: CorruptHeaderError,
  },
  {
    name: 'compressed descriptor inside the header',
    base: 'compressed',
    mutate: (b) => (b.writeBigUInt64BE((1n << 62n) | 100n, layout(b).l2), b),
    error: CorruptHeaderError,
  },
  {
    name: 'compressed deflate data damaged',
    base: 'compressed',
    mutate: (b) => {
      const at = Number(layout(b).entry0 & ((1n << 54n) - 1n));
      b.fill(0xff, at, at + 64);
      return b;
    },
    error: CorruptHeaderError,
  },
  {
    name: 'compressed zstd frame damaged',
    base: 'zstd',
    mutate: (b) => {
      const at = Number(layout(b).entry0 & ((1n << 54n) - 1n));
      b.fill(0x00, at, at + 8);
      return b;
    },
    error: CorruptHeaderError,
  },
  {
    name: 'extended L2: subcluster both allocated and zero',
    base: 'extended',
    mutate: (b) => {
      // Bitmap u64 after the entry: bytes 8-11 zero bits (32-63), bytes 12-15 allocation bits (0-31).
      const alloc = b.readUInt32BE(layout(b).l2 + 12);
      b.writeUInt32BE((alloc & -alloc) >>> 0, layout(b).l2 + 8);
      return b;
    },
    error: CorruptHeaderError,
  },
];

for (const c of corpus) {
  test(`corrupt qcow2: ${c.name} -> ${c.error.name}`, { skip: needTools('qemu-img') }, async () => {
    const base = images.get(c.base)!;
    if (c.base === 'compressed' || c.base === 'zstd') assert.ok(layout(base).entry0 & (1n << 62n), 'cluster 0 of the base is compressed');
    if (c.base === 'extended') assert.notEqual(base.readUInt32BE(layout(base).l2 + 12), 0, 'cluster 0 of the base has allocated subclusters');
    const bytes = new Uint8Array(c.mutate(Buffer.from(base)));
    await assert.rejects(
      (async () => {
        const dev = await Qcow2Device.open(new MemoryDevice(bytes, true));
        await readAll(dev);
        await dev.extents(0, dev.size);
      })(),
      (err: Error) => {
        assert.ok(err instanceof c.error, `${err.constructor.name}: ${err.message}`);
        return true;
      },
    );
  });
}

test('every base image of the corpus reads correctly unmodified', { skip: needTools('qemu-img') }, async () => {
  for (const [name, bytes] of images) {
    const dev = await Qcow2Device.open(new MemoryDevice(new Uint8Array(bytes), true));
    assert.equal(sha256(await readAll(dev)), sha256(disk), name);
  }
});

test('the dirty bit does not stop reading', { skip: needTools('qemu-img') }, async () => {
  const b = Buffer.from(images.get('plain')!);
  b.writeBigUInt64BE(1n, 72);
  const dev = await Qcow2Device.open(new MemoryDevice(new Uint8Array(b), true));
  assert.equal(dev.dirty, true);
  assert.equal(sha256(await readAll(dev)), sha256(disk));
});

test('LUKS-encrypted qcow2: refused without a passphrase, read right with it, wrong one rejected', { skip: needTools('qemu-img') }, async () => {
  const out = join(tmp.dir, 'enc.qcow2');
  runQemuImgLuks([
    'convert', '--object', 'secret,id=s0,data=open sesame', '-f', 'raw', '-O', 'qcow2',
    '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=100', join(tmp.dir, 'disk.raw'), out,
  ]);
  const bytes = new Uint8Array(readFileSync(out));
  await assert.rejects(Qcow2Device.open(new MemoryDevice(bytes, true)), (err: Error) => {
    assert.ok(err instanceof UnsupportedError);
    assert.match(err.message, /LUKS-encrypted qcow2/);
    return true;
  });
  await assert.rejects(Qcow2Device.open(new MemoryDevice(bytes, true), { passphrase: Passphrase.fromString('open says me') }), WrongPassphraseError);
  const pass = Passphrase.fromString('open sesame');
  const dev = await Qcow2Device.open(new MemoryDevice(bytes, true), { passphrase: pass });
  pass.wipe();
  assert.equal(sha256(await readAll(dev, 100_000)), sha256(disk));
  // The ciphertext on disk is not the plaintext.
  let at = 0;
  while (disk.subarray(at, at + 64).every((b) => b === 0)) at += 4096;
  assert.equal(Buffer.from(bytes).indexOf(Buffer.from(disk.subarray(at, at + 64))), -1);
  await dev.close();
});

test('a backing file is refused unless passed explicitly, then reads through', { skip: needTools('qemu-img', 'qemu-io') }, async () => {
  const base = join(tmp.dir, 'plain.qcow2');
  const overlay = join(tmp.dir, 'overlay.qcow2');
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', overlay]);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x42 100k 5k', overlay]);
  const overlayBytes = new Uint8Array(readFileSync(overlay));
  await assert.rejects(Qcow2Device.open(new MemoryDevice(overlayBytes, true)), (err: Error) => {
    assert.ok(err instanceof BackingFileRequiredError);
    assert.equal(err.backingFile, base);
    assert.equal(err.code, 'BACKING_FILE_REQUIRED');
    return true;
  });
  const backing = await Qcow2Device.open(new MemoryDevice(new Uint8Array(images.get('plain')!), true));
  const dev = await Qcow2Device.open(new MemoryDevice(overlayBytes, true), { backing });
  const expected = disk.slice();
  expected.fill(0x42, 100 * 1024, 105 * 1024);
  assert.equal(sha256(await readAll(dev)), sha256(expected));
  // A backing image for an image without one is a caller mistake.
  await assert.rejects(Qcow2Device.open(new MemoryDevice(new Uint8Array(images.get('plain')!), true), { backing }), InvalidArgumentError);
});
