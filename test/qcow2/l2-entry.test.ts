/** qcow2 L1/L2 entries and refcount entries: known-answer tables and round trips. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeL1Entry,
  decodeL2Entry,
  encodeL1Entry,
  encodeL2Compressed,
  encodeL2Normal,
  l2EntryReservedBits,
  subclusterState,
} from '../../src/formats/qcow2/l2-entry.js';
import { getRefcount, refcountBlockEntries, setRefcount } from '../../src/formats/qcow2/refcount.js';

const split = (v: bigint): [number, number] => [Number(v >> 32n), Number(v & 0xffffffffn)];

// [entry (u64), cluster_bits, zero flag allowed, expected]
const l2Vectors: Array<[bigint, number, boolean, ReturnType<typeof decodeL2Entry>]> = [
  [0n, 16, true, { kind: 'unallocated' }],
  [0x8000000000050000n, 16, true, { kind: 'normal', hostOffset: 0x50000, copied: true }],
  [0x0000000000050000n, 16, true, { kind: 'normal', hostOffset: 0x50000, copied: false }],
  [0x00ffffffffff0000n, 16, true, { kind: 'normal', hostOffset: 0xffffffff0000 + 0xff000000000000, copied: false }],
  [1n, 16, true, { kind: 'zero', hostOffset: 0 }],
  [0x8000000000070001n, 16, true, { kind: 'zero', hostOffset: 0x70000 }],
  // v2 / extended L2: bit 0 has no meaning.
  [1n, 16, false, { kind: 'unallocated' }],
  // Compressed, 64 KiB clusters: x = 54; offset bits 0-53, sectors bits 54-61.
  [0x4000000000012345n, 16, true, { kind: 'compressed', hostOffset: 0x12345, additionalSectors: 0, span: 512 - 0x145 }],
  [(1n << 62n) | (3n << 54n) | 0x30000n, 16, true, { kind: 'compressed', hostOffset: 0x30000, additionalSectors: 3, span: 2048 }],
  // 2 MiB clusters: x = 49, sector count has 13 bits.
  [(1n << 62n) | (4095n << 49n) | 0x400200n, 21, true, { kind: 'compressed', hostOffset: 0x400200, additionalSectors: 4095, span: 4096 * 512 }],
  // 512-byte clusters: x = 61, one sector-count bit.
  [(1n << 62n) | (1n << 61n) | 0x1234n, 9, true, { kind: 'compressed', hostOffset: 0x1234, additionalSectors: 1, span: 1024 - 0x34 }],
];

for (const [entry, bits, zf, expected] of l2Vectors) {
  test(`decodeL2Entry 0x${entry.toString(16)} (cluster_bits ${bits}, zero flag ${zf})`, () => {
    const [hi, lo] = split(entry);
    assert.deepEqual(decodeL2Entry(hi, lo, bits, zf), expected);
  });
}

test('encodeL2Normal / encodeL1Entry round trip', () => {
  for (const off of [0x10000, 0x123450000, 2 ** 52]) {
    for (const copied of [true, false]) {
      const [hi, lo] = encodeL2Normal(off, copied);
      assert.deepEqual(decodeL2Entry(hi, lo, 16, true), { kind: 'normal', hostOffset: off, copied });
      assert.deepEqual(decodeL1Entry(...encodeL1Entry(off, copied)), { l2Offset: off, copied, reserved: false });
    }
  }
  assert.equal(decodeL1Entry(0, 0x10001).reserved, true);
  assert.equal(decodeL1Entry(0x01000000, 0).reserved, true);
});

test('encodeL2Compressed: sector count covers the data, decode inverts it', () => {
  for (const bits of [9, 12, 16, 21]) {
    for (const [off, len] of [[0x20000, 100], [0x20000 + 511, 2], [0x20000 + 300, 2 ** bits - 1]] as const) {
      if (len >= 2 ** bits) continue;
      const [hi, lo] = encodeL2Compressed(off, len, bits);
      const e = decodeL2Entry(hi, lo, bits, true);
      assert.equal(e.kind, 'compressed');
      if (e.kind !== 'compressed') return;
      assert.equal(e.hostOffset, off);
      assert.ok(e.span >= len && e.span - len < 512, `span ${e.span} for ${len} bytes at ${off}`);
      assert.equal((off + e.span) % 512, 0);
    }
  }
  assert.throws(() => encodeL2Compressed(0x10000, 2 * 65536 + 1, 16), RangeError);
});

test('reserved bits and subcluster states', () => {
  assert.equal(l2EntryReservedBits(0, 0x10000 | 0x100, true), true);
  assert.equal(l2EntryReservedBits(0, 0x10001, true), false);
  assert.equal(l2EntryReservedBits(0, 0x10001, false), true);
  assert.equal(l2EntryReservedBits(0x01000000, 0x10000, true), true);
  assert.equal(subclusterState(0b0101, 0b1000, 0), 'data');
  assert.equal(subclusterState(0b0101, 0b1000, 1), 'unallocated');
  assert.equal(subclusterState(0b0101, 0b1000, 3), 'zero');
  assert.equal(subclusterState(0x80000000 | 0, 0x80000000 | 0, 31), 'invalid');
});

test('refcount entries for every order (bit 0 is the least significant bit)', () => {
  const block = new Uint8Array(512);
  assert.equal(refcountBlockEntries(16, 4), 32768);
  assert.equal(refcountBlockEntries(9, 0), 4096);
  for (let order = 0; order <= 6; order++) {
    block.fill(0);
    const max = order >= 6 ? 2 ** 53 - 1 : 2 ** (1 << order) - 1;
    setRefcount(block, 5, max, order);
    setRefcount(block, 6, 1, order);
    assert.equal(getRefcount(block, 5, order), max);
    assert.equal(getRefcount(block, 6, order), 1);
    assert.equal(getRefcount(block, 4, order), 0);
    assert.throws(() => setRefcount(block, 1, 2 ** (1 << Math.min(order, 5)) * (order >= 6 ? 2 ** 30 : 1), order), RangeError);
  }
  block.fill(0);
  setRefcount(block, 1, 1, 0);
  assert.equal(block[0], 0b10);
  block.fill(0);
  setRefcount(block, 1, 0x0102, 4);
  assert.deepEqual([...block.subarray(2, 4)], [1, 2]);
});
