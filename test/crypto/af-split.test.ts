import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { afMerge, afSplit, afSplitWithRandom, useNativeAfChain } from '../../src/crypto/af-split.js';
import { nativeAddon } from '../../src/native-addon.js';
import { InvalidArgumentError, UnsupportedError } from '../../src/errors.js';

/** Independent textbook AF-split (LUKS1 spec 2.4), written with Buffers. */
function textbookSplit(key: Buffer, stripes: number, hash: string, random: Buffer): Buffer {
  const h = (i: number, block: Buffer) => {
    const idx = Buffer.alloc(4);
    idx.writeUInt32BE(i);
    return createHash(hash).update(Buffer.concat([idx, block])).digest();
  };
  const diffuse = (src: Buffer): Buffer => {
    const size = createHash(hash).digest().length;
    const parts: Buffer[] = [];
    const full = Math.floor(src.length / size);
    for (let i = 0; i < full; i++) parts.push(h(i, src.subarray(i * size, (i + 1) * size)));
    const rest = src.length % size;
    if (rest) parts.push(h(full, src.subarray(full * size)).subarray(0, rest));
    return Buffer.concat(parts);
  };
  const xor = (a: Buffer, b: Buffer) => Buffer.from(a.map((x, i) => x ^ b[i]!));
  let d: Buffer = Buffer.alloc(key.length);
  const stripesOut: Buffer[] = [];
  for (let i = 0; i < stripes - 1; i++) {
    const s = random.subarray(i * key.length, (i + 1) * key.length);
    stripesOut.push(Buffer.from(s));
    d = diffuse(xor(d, s));
  }
  stripesOut.push(xor(d, key));
  return Buffer.concat(stripesOut);
}

/** Deterministic "random" bytes: sha256 counter stream. */
function stream(n: number, seed: string): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; out.length * 32 < n; i++) out.push(createHash('sha256').update(`${seed}:${i}`).digest());
  return Buffer.concat(out).subarray(0, n);
}

const HASHES = ['sha1', 'sha256', 'sha512'];
const KEY_SIZES = [16, 32, 64]; // 64 with sha1 exercises a partial last diffuse block (64 = 3*20 + 4)

test('afMerge(afSplit(k)) == k for key sizes 16/32/64 and sha1/sha256/sha512 with 4000 stripes', () => {
  for (const hash of HASHES) {
    for (const size of KEY_SIZES) {
      const key = stream(size, `key-${hash}-${size}`);
      const material = afSplit(key, 4000, hash);
      assert.equal(material.length, size * 4000);
      assert.deepEqual(Buffer.from(afMerge(material, size, 4000, hash)), key, `${hash} ${size}`);
      if (size === 32) {
        // Two splits of one key differ (fresh random stripes) but merge to the same key.
        const again = afSplit(key, 4000, hash);
        assert.notDeepEqual(Buffer.from(again), Buffer.from(material));
        assert.deepEqual(Buffer.from(afMerge(again, size, 4000, hash)), key);
      }
    }
  }
});

// Both chains: the native module's (native/af-chain.c) and the JavaScript one it replaces.
for (const native of [true, false]) {
test(`afSplitWithRandom matches an independent textbook implementation (known answer, ${native ? 'native' : 'JavaScript'} chain)`, (t) => {
  if (native && !nativeAddon()?.afChain) {
    if (process.env.CI === 'true') assert.fail('the native module (afChain) is missing under CI=true');
    t.skip('native module not built');
    return;
  }
  useNativeAfChain(native);
  t.after(() => useNativeAfChain(true));
  for (const hash of [...HASHES, 'ripemd160']) {
    for (const size of [...KEY_SIZES, 24, 48]) {
      for (const stripes of size === 64 && hash === 'sha256' ? [1, 2, 7, 4000] : [1, 2, 7, 150]) {
        const key = stream(size, `k${size}`);
        const random = stream((stripes - 1) * size, `r${hash}${size}${stripes}`);
        const ours = afSplitWithRandom(key, stripes, hash, new Uint8Array(random));
        assert.deepEqual(Buffer.from(ours), textbookSplit(key, stripes, hash, random), `${hash} ${size} ${stripes}`);
        assert.deepEqual(Buffer.from(afMerge(ours, size, stripes, hash)), key);
      }
    }
  }
});
}

test('the native AF chain checks its arguments and declines hashes OpenSSL does not know', (t) => {
  const addon = nativeAddon();
  if (!addon?.afChain) {
    if (process.env.CI === 'true') assert.fail('the native module (afChain) is missing under CI=true');
    t.skip('native module not built');
    return;
  }
  assert.throws(() => addon.afChain!(new Uint8Array(63), 32, 2, 'sha256'), RangeError);
  assert.throws(() => addon.afChain!(new Uint8Array(64), 0, 2, 'sha256'), RangeError);
  assert.equal(addon.afChain(new Uint8Array(64), 32, 2, 'no-such-hash'), undefined);
  // One stripe: d_1 = H(s_0), per 32-byte block with the block number in front.
  const s0 = stream(64, 'one');
  const expect = Buffer.concat([0, 1].map((j) => createHash('sha256').update(Buffer.concat([Buffer.from([0, 0, 0, j]), s0.subarray(j * 32, j * 32 + 32)])).digest()));
  assert.deepEqual(Buffer.from(addon.afChain(new Uint8Array(s0), 64, 1, 'sha256')!), expect);
});

test('afMerge ignores padding after the material and any damaged stripe changes the key', () => {
  const key = stream(32, 'pad');
  const material = afSplit(key, 4000, 'sha256');
  const padded = new Uint8Array(Math.ceil(material.length / 512) * 512 + 512);
  padded.set(material);
  padded.fill(0xaa, material.length);
  assert.deepEqual(Buffer.from(afMerge(padded, 32, 4000, 'sha256')), key);
  const damaged = material.slice();
  damaged[1234 * 32 + 5]! ^= 1;
  assert.notDeepEqual(Buffer.from(afMerge(damaged, 32, 4000, 'sha256')), key);
});

test('rejects short material, wrong random length, bad sizes and unsupported hashes', () => {
  assert.throws(() => afMerge(new Uint8Array(100), 32, 4000, 'sha256'), InvalidArgumentError);
  assert.throws(() => afSplitWithRandom(new Uint8Array(32), 4, 'sha256', new Uint8Array(10)), InvalidArgumentError);
  assert.throws(() => afSplit(new Uint8Array(32), 0, 'sha256'), InvalidArgumentError);
  assert.throws(() => afSplit(new Uint8Array(0), 4000, 'sha256'), InvalidArgumentError);
  assert.throws(() => afSplit(new Uint8Array(32), 10, 'whirlpool'), (e: unknown) => e instanceof UnsupportedError && /whirlpool/.test(e.message));
});
