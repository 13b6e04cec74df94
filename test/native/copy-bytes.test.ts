import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { copyBytes, copyBytesPortable, nativeAddon, nativeAddonError } from '../../src/native-addon.js';

const NATIVE = nativeAddon() !== null;

test('copyBytes: the native copy is built and loads (CI requires it)', (t) => {
  if (NATIVE) return;
  const why = `native module unavailable: ${nativeAddonError()} (run: node scripts/build-native.mjs)`;
  if (process.env.CI === 'true') assert.fail(why);
  console.error(`\n*** SKIPPED: ${why}\n`);
  t.skip(why);
});

for (const [name, copy] of [
  ['copyBytes', copyBytes],
  ['native copyBytes', NATIVE ? nativeAddon()!.copyBytes : undefined],
  ['portable', copyBytesPortable],
] as const) {
  test(`${name}: equals TypedArray.set into shared and plain memory at every alignment`, { skip: copy ? false : 'native module not built' }, () => {
    const source = new Uint8Array(randomBytes(4096 + 64));
    for (const shared of [true, false]) {
      for (const srcAlign of [0, 1, 3, 4, 28]) {
        for (const dstOffset of [0, 1, 5, 8, 100]) {
          for (const len of [0, 1, 15, 16, 17, 4096]) {
            const make = () => new Uint8Array(shared ? new SharedArrayBuffer(4300) : new ArrayBuffer(4300)).fill(0xee);
            const want = make();
            const got = make();
            const src = source.subarray(srcAlign, srcAlign + len);
            want.set(src, dstOffset);
            copy!(got, dstOffset, src);
            assert.deepEqual(got, want, `shared=${shared} srcAlign=${srcAlign} dstOffset=${dstOffset} len=${len}`);
          }
        }
      }
    }
    // A destination that is a view inside a larger buffer: bytes outside the view stay untouched.
    const outer = new Uint8Array(new SharedArrayBuffer(64)).fill(1);
    copy!(outer.subarray(10, 20), 2, new Uint8Array(8).fill(9));
    assert.deepEqual([...outer.subarray(8, 24)], [1, 1, 1, 1, 9, 9, 9, 9, 9, 9, 9, 9, 1, 1, 1, 1]);
  });

  test(`${name}: a source that does not fit is a RangeError and nothing is written`, { skip: copy ? false : 'native module not built' }, () => {
    const dst = new Uint8Array(new SharedArrayBuffer(16));
    assert.throws(() => copy!(dst, 10, new Uint8Array(7).fill(5)), RangeError);
    assert.throws(() => copy!(dst, 17, new Uint8Array(0)), RangeError);
    assert.throws(() => copy!(dst, -1, new Uint8Array(1)), RangeError);
    assert.deepEqual([...dst], new Array(16).fill(0));
  });
}

test('native copyBytes: non-byte arguments are a TypeError', { skip: NATIVE ? false : 'native module not built' }, () => {
  const addon = nativeAddon()!;
  assert.throws(() => addon.copyBytes(new Uint16Array(4) as unknown as Uint8Array, 0, new Uint8Array(2)), TypeError);
  assert.throws(() => addon.copyBytes(new Uint8Array(4), 0, 'ab' as unknown as Uint8Array), TypeError);
  assert.throws(() => addon.copyBytes(new Uint8Array(4), 'x' as unknown as number, new Uint8Array(2)), TypeError);
});
