import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { blockDigestsInto } from '../../src/crypto/hash.js';
import { InvalidArgumentError } from '../../src/errors.js';
import { nativeAddon } from '../../src/native-addon.js';

/** The reference: one digest per block, computed here with a Hash object each. */
function expected(data: Uint8Array, block: number, hash: string): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < data.length; i += block) parts.push(createHash(hash).update(data.subarray(i, i + block)).digest());
  return Buffer.concat(parts);
}

const CASES: Array<[string, number, number]> = [
  // hash, block, data length (not always a multiple of the block: the last block is short)
  ['sha256', 4096, 4096 * 17],
  ['sha256', 512, 512 * 9 + 100],
  ['sha1', 4096, 4096 * 3 + 1],
  ['sha512', 4096, 4096 * 5],
  ['ripemd160', 1024, 1024 * 4],
  ['sha256', 4096, 0],
];

for (const native of [true, false]) {
  test(`blockDigestsInto equals a digest per block computed alone (${native ? 'native' : 'JavaScript'})`, (t) => {
    if (native && !nativeAddon()?.blockDigests) {
      if (process.env.CI === 'true') assert.fail('the native module (blockDigests) is missing under CI=true');
      t.skip('native module not built');
      return;
    }
    for (const [hash, block, length] of CASES) {
      // Shared memory too: the reencryption engines hash zones that live in SharedArrayBuffers.
      const data = new Uint8Array(new SharedArrayBuffer(length + 3), 3, length);
      data.set(randomBytes(length));
      const want = expected(data, block, hash);
      const out = new Uint8Array(want.length + 7).fill(0xee);
      blockDigestsInto(data, block, hash, out, native);
      assert.deepEqual(Buffer.from(out.subarray(0, want.length)), want, `${hash} ${block} ${length}`);
      assert.ok(out.subarray(want.length).every((b) => b === 0xee), 'nothing written past the digests');
    }
  });
}

test('blockDigestsInto refuses a bad block size and an output too small', () => {
  const data = new Uint8Array(8192);
  assert.throws(() => blockDigestsInto(data, 0, 'sha256', new Uint8Array(64)), InvalidArgumentError);
  assert.throws(() => blockDigestsInto(data, 4096, 'sha256', new Uint8Array(63)), RangeError);
  const addon = nativeAddon();
  if (addon?.blockDigests) {
    assert.throws(() => addon.blockDigests!(data, 4096, 'sha256', new Uint8Array(63)), RangeError);
    assert.equal(addon.blockDigests(data, 4096, 'no-such-hash', new Uint8Array(64)), false);
  }
});
