/** qcow2 header: known answers from qemu-img-made images, exact round trips, validation. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { needTools, run, tempDir } from '../helpers/tools.js';
import {
  EXT,
  INCOMPAT,
  QCOW2_MAGIC,
  type Qcow2Header,
  decodeQcow2Extras,
  decodeQcow2Header,
  encodeQcow2Header,
  extensionPadding,
  qcow2HeaderEncodedLength,
  validateQcow2Header,
} from '../../src/formats/qcow2/header.js';
import { CorruptHeaderError, UnsupportedError } from '../../src/errors.js';

let tmp: { dir: string; cleanup: () => void };
before(() => {
  tmp = tempDir('brickcrypt-qcow2-hdr-');
});
after(() => tmp.cleanup());

function firstCluster(path: string): Uint8Array {
  const bytes = new Uint8Array(readFileSync(path));
  const bits = new DataView(bytes.buffer).getUint32(20);
  return bytes.subarray(0, Math.min(bytes.length, 2 ** bits));
}

const made: Array<{
  name: string;
  create: (path: string) => void;
  expect: Partial<Qcow2Header> & { backingFormat?: string; extendedL2?: boolean };
}> = [
  {
    name: 'v3 1 GiB default',
    create: (p) => run('qemu-img', ['create', '-q', '-f', 'qcow2', p, '1G']),
    expect: { version: 3, clusterBits: 16, size: 2 ** 30, l1Size: 2, refcountOrder: 4, headerLength: 112, cryptMethod: 0, compressionType: 0 },
  },
  {
    name: 'v2 100 MiB 4 KiB clusters',
    create: (p) => run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', p, '100M']),
    // 4 KiB clusters: 512 entries per L2 -> 2 MiB per L2 table -> 50 L1 entries.
    expect: { version: 2, clusterBits: 12, size: 100 * 2 ** 20, l1Size: 50, refcountOrder: 4, headerLength: 72 },
  },
  {
    name: 'v3 zstd, extended L2, refcount_bits=64',
    create: (p) => run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd,extended_l2=on,refcount_bits=64', p, '3G']),
    // Extended L2: 4096 entries per 64 KiB table -> 256 MiB per table -> 12 L1 entries.
    expect: { version: 3, clusterBits: 16, size: 3 * 2 ** 30, l1Size: 12, refcountOrder: 6, compressionType: 1, extendedL2: true },
  },
  {
    name: 'v3 with backing file and format',
    create: (p) => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', p + '.base', '64M']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', p + '.base', '-F', 'qcow2', p]);
    },
    expect: { version: 3, size: 64 * 2 ** 20, backingFormat: 'qcow2' },
  },
];

for (const m of made) {
  test(`qemu-img ${m.name}: known fields and exact round trip`, { skip: needTools('qemu-img') }, () => {
    const path = join(tmp.dir, m.name.replace(/\W+/g, '_') + '.qcow2');
    m.create(path);
    const bytes = firstCluster(path);
    const h = decodeQcow2Header(bytes);
    validateQcow2Header(h, { fileSize: readFileSync(path).length, purpose: 'inspect' });
    assert.equal(h.magic, QCOW2_MAGIC);
    const { backingFormat, extendedL2, ...fields } = m.expect;
    for (const [k, v] of Object.entries(fields)) assert.equal(h[k as keyof Qcow2Header], v, k);
    const extras = decodeQcow2Extras(h);
    if (backingFormat) {
      assert.equal(extras.backingFormat, backingFormat);
      assert.equal(h.backingFile, path + '.base');
    }
    if (extendedL2) assert.ok(h.incompatibleFeatures & INCOMPAT.extendedL2);
    if (h.version === 3) {
      // qemu writes a feature name table naming its incompatible bits.
      const names = extras.featureNames.filter((f) => f.type === 0).map((f) => `${f.bit}:${f.name}`);
      assert.ok(names.includes('0:dirty bit') && names.includes('4:extended L2 entries'), names.join(', '));
    }
    const encoded = encodeQcow2Header(h);
    assert.equal(encoded.length, qcow2HeaderEncodedLength(h));
    assert.deepEqual(Buffer.from(encoded), Buffer.from(bytes.subarray(0, encoded.length)));
    // Everything after the encoded area in the first cluster is zero: nothing was dropped.
    assert.ok(bytes.subarray(encoded.length).every((b) => b === 0));
  });
}

function synthetic(): Qcow2Header {
  const fmt = new TextEncoder().encode('raw');
  return {
    magic: QCOW2_MAGIC, version: 3, backingFileOffset: 512, backingFileSize: 9, clusterBits: 16, size: 10 * 2 ** 30,
    cryptMethod: 0, l1Size: 20, l1TableOffset: 3 * 65536, refcountTableOffset: 65536, refcountTableClusters: 1,
    nbSnapshots: 0, snapshotsOffset: 0, incompatibleFeatures: INCOMPAT.dirty, compatibleFeatures: 1n, autoclearFeatures: 0n,
    refcountOrder: 4, headerLength: 112, compressionType: 0, extraHeader: new Uint8Array(7),
    extensions: [{ type: EXT.backingFormat, data: fmt, padding: extensionPadding(fmt.length) }],
    endMarkerLength: 0, backingFile: 'base.img',
  };
}

test('synthetic header: encode then decode gives the same structure', () => {
  const h = synthetic();
  h.backingFileSize = 8;
  const bytes = encodeQcow2Header(h);
  assert.equal(bytes.length, 520);
  // Offsets table spot checks.
  const v = new DataView(bytes.buffer);
  assert.equal(v.getUint32(0), 0x514649fb);
  assert.equal(v.getUint32(36), 20);
  assert.equal(v.getBigUint64(72), 1n);
  assert.equal(v.getUint32(100), 112);
  assert.equal(v.getUint32(112), EXT.backingFormat);
  assert.equal(v.getUint32(116), 3);
  assert.deepEqual(decodeQcow2Header(bytes), h);
});

const invalid: Array<{ name: string; patch: (h: Qcow2Header) => void; error: typeof CorruptHeaderError | typeof UnsupportedError }> = [
  { name: 'bad magic', patch: (h) => (h.magic = 0x514649fa), error: CorruptHeaderError },
  { name: 'version 4', patch: (h) => (h.version = 4), error: UnsupportedError },
  { name: 'cluster_bits 8', patch: (h) => (h.clusterBits = 8), error: CorruptHeaderError },
  { name: 'cluster_bits 40', patch: (h) => (h.clusterBits = 40), error: CorruptHeaderError },
  { name: 'cluster_bits 22 (4 MiB)', patch: (h) => (h.clusterBits = 22), error: UnsupportedError },
  { name: 'refcount_order 7', patch: (h) => (h.refcountOrder = 7), error: CorruptHeaderError },
  { name: 'header_length not multiple of 8', patch: (h) => (h.headerLength = 108), error: CorruptHeaderError },
  { name: 'l1_size over 32 MiB', patch: (h) => (h.l1Size = 5_000_000), error: CorruptHeaderError },
  { name: 'l1_size too small for the disk', patch: (h) => (h.l1Size = 19), error: CorruptHeaderError },
  { name: 'L1 table unaligned', patch: (h) => (h.l1TableOffset = 65536 + 8), error: CorruptHeaderError },
  { name: 'L1 table in the header cluster', patch: (h) => (h.l1TableOffset = 0), error: CorruptHeaderError },
  { name: 'L1 table past EOF', patch: (h) => (h.l1TableOffset = 100 * 65536), error: CorruptHeaderError },
  { name: 'size beyond 2^53', patch: (h) => (h.size = 2 ** 60), error: CorruptHeaderError },
  { name: 'backing name longer than 1023', patch: (h) => (h.backingFileSize = 1024), error: CorruptHeaderError },
  { name: 'crypt_method 3', patch: (h) => (h.cryptMethod = 3), error: CorruptHeaderError },
  { name: 'crypt_method 1 (AES)', patch: (h) => (h.cryptMethod = 1), error: UnsupportedError },
  { name: 'crypt_method 2 (LUKS)', patch: (h) => (h.cryptMethod = 2), error: UnsupportedError },
  { name: 'unknown incompatible bit 9', patch: (h) => (h.incompatibleFeatures |= 1n << 9n), error: UnsupportedError },
  { name: 'external data file', patch: (h) => (h.incompatibleFeatures |= INCOMPAT.dataFile), error: UnsupportedError },
  { name: 'compression bit without type', patch: (h) => (h.incompatibleFeatures |= INCOMPAT.compression), error: CorruptHeaderError },
  { name: 'compression type without bit', patch: (h) => (h.compressionType = 1), error: CorruptHeaderError },
  {
    name: 'compression type 7',
    patch: (h) => {
      h.compressionType = 7;
      h.incompatibleFeatures |= INCOMPAT.compression;
    },
    error: UnsupportedError,
  },
  {
    name: 'extended L2 with 4 KiB clusters',
    patch: (h) => {
      h.clusterBits = 12;
      h.l1Size = 100_000;
      h.l1TableOffset = 4096;
      h.incompatibleFeatures |= INCOMPAT.extendedL2;
    },
    error: CorruptHeaderError,
  },
];

test('validateQcow2Header: valid synthetic header passes', () => {
  validateQcow2Header(synthetic(), { fileSize: 4 * 65536 });
});

for (const c of invalid) {
  test(`validateQcow2Header rejects ${c.name}`, () => {
    const h = synthetic();
    c.patch(h);
    assert.throws(() => validateQcow2Header(h, { fileSize: 4 * 65536 }), c.error);
  });
}

test('decodeQcow2Header rejects truncated headers and runaway extension lists', () => {
  const bytes = encodeQcow2Header(synthetic());
  assert.throws(() => decodeQcow2Header(bytes.subarray(0, 71)), CorruptHeaderError);
  assert.throws(() => decodeQcow2Header(bytes.subarray(0, 100)), CorruptHeaderError);
  const runaway = new Uint8Array(4096);
  runaway.set(bytes.subarray(0, 112));
  new DataView(runaway.buffer).setUint32(112, 0x12345678);
  new DataView(runaway.buffer).setUint32(116, 0xfffffff0);
  assert.throws(() => decodeQcow2Header(runaway), CorruptHeaderError);
  const noEnd = new Uint8Array(4096).fill(0xaa);
  noEnd.set(bytes.subarray(0, 112));
  assert.throws(() => decodeQcow2Header(noEnd), CorruptHeaderError);
  const badLength = bytes.slice();
  new DataView(badLength.buffer).setUint32(100, 9999);
  assert.throws(() => decodeQcow2Header(badLength), CorruptHeaderError);
});

test('an unknown incompatible bit named in the feature table is named in the error', () => {
  const h = synthetic();
  const entry = new Uint8Array(48);
  entry[0] = 0;
  entry[1] = 9;
  entry.set(new TextEncoder().encode('quantum clusters'), 2);
  h.extensions.push({ type: EXT.featureNames, data: entry, padding: new Uint8Array(0) });
  h.incompatibleFeatures |= 1n << 9n;
  assert.throws(() => validateQcow2Header(h), (err: Error) => err instanceof UnsupportedError && /9 \(quantum clusters\)/.test(err.message));
});
