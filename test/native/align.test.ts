import { test } from 'node:test';
import assert from 'node:assert/strict';
import { allocateAligned, isAddressAligned, nativeAddon } from '../../src/native-addon.js';

const addon = nativeAddon();
const skip = addon ? false : 'native module not built';

test('alignGap: stepping through a buffer byte by byte, the gap falls by one and wraps at the alignment', { skip }, () => {
  const whole = new Uint8Array(new SharedArrayBuffer(300));
  const first = addon!.alignGap(whole, 64);
  assert.ok(first >= 0 && first < 64);
  for (let i = 0; i < 200; i++) {
    assert.equal(addon!.alignGap(whole.subarray(i), 64), (first - i + 64 * 8) % 64, `offset ${i}`);
  }
  // Plain ArrayBuffers too; an alignment of 1 is always met.
  const plain = new Uint8Array(100);
  assert.equal(addon!.alignGap(plain.subarray(7), 1), 0);
});

test('alignGap: bad arguments are typed errors', { skip }, () => {
  assert.throws(() => addon!.alignGap(new Uint8Array(8), 3), RangeError);
  assert.throws(() => addon!.alignGap(new Uint8Array(8), 0), RangeError);
  assert.throws(() => addon!.alignGap(new Uint16Array(8) as unknown as Uint8Array, 8), TypeError);
  assert.throws(() => (addon!.alignGap as (...a: unknown[]) => number)(new Uint8Array(8)), TypeError);
});

test('allocateAligned: zeroed shared memory of the asked length at an aligned address', { skip }, () => {
  for (const alignment of [512, 4096, 65536]) {
    const { view, aligned } = allocateAligned(10_000, alignment);
    assert.equal(aligned, true);
    assert.equal(view.length, 10_000);
    assert.ok(view.buffer instanceof SharedArrayBuffer);
    assert.ok(view.every((b) => b === 0));
    assert.equal(isAddressAligned(view, alignment), true);
    // One byte further is not aligned (for any alignment above 1).
    assert.equal(isAddressAligned(view.subarray(1), alignment), false);
  }
});
