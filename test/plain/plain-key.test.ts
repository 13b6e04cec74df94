/**
 * Known answers for cryptsetup's plain-mode key derivation (docs/plain.md).
 *
 * The expected keys were computed outside brickcrypt, with Python's hashlib and checked
 * against `openssl dgst`, following lib/crypt_plain.c: round r = H("A" * r || input), rounds
 * concatenated and cut to the key size; "hash:N" keeps N bytes and zero-fills the rest.
 *   python3 -c 'import hashlib; p=b"brickcrypt"; print((hashlib.sha256(p).digest()+hashlib.sha256(b"A"+p).digest()).hex())'
 *   printf Abrickcrypt | openssl dgst -sha256
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import {
  effectivePlainHash,
  plainHash,
  plainReadRule,
  plainVolumeKey,
  takePlainInput,
  PLAIN_DEFAULTS,
  PLAIN_MAX_INPUT_BYTES,
} from '../../src/crypto/plain-key.js';
import { readPlainVolumeKey } from '../../src/cli/key-input.js';
import { resolvePlainParams } from '../../src/plain/plain-volume.js';
import { InvalidArgumentError, UnsupportedError } from '../../src/errors.js';
import { Passphrase } from '../../src/secret.js';
import { tempDir } from '../helpers/tools.js';

const PASS = new Uint8Array(Buffer.from('brickcrypt'));

const HASH_ROUNDS: Array<[hash: string, keyBytes: number, hex: string]> = [
  ['sha256', 32, 'ef3696d54cbb6eae7440ff83a73a5b1cdef47151a03f543cd516769cea010beb'],
  ['sha256', 64, 'ef3696d54cbb6eae7440ff83a73a5b1cdef47151a03f543cd516769cea010bebdb14921f4d29209ce8dd9e367e1d3cadbcdf7f96184762bf9114f17965591edc'],
  ['ripemd160', 32, '3375a0e034004d2c2812449ad3c80567ee78c73db11d9009bdc4cdcbbf50657d'],
  ['ripemd160', 64, '3375a0e034004d2c2812449ad3c80567ee78c73db11d9009bdc4cdcbbf50657dceda3a68bf82fc0fa4c1cef7421d5e3d3ca724d3e009f50ec8c2381e1bc23d9d'],
  ['sha512', 32, 'cb5384cac5654f5b55dc7eea639a8ed5396716f3010cdc8de3248824a9459273'],
  ['sha512', 64, 'cb5384cac5654f5b55dc7eea639a8ed5396716f3010cdc8de3248824a945927327d6e9602387336308bce794d159960f610cfd1b5145993ebb2ee79d1d77401e'],
  ['sha1', 64, '225016344ac13b93f93c34aa816b9689d478ca4e6d3d99eaddc3191e73c951d123dc147a6788283d1395a8c0422b1d26acbc2b3eff772316deb0d4549ad25caa'],
  [
    'sha384',
    128,
    'bd5f39892f0545b7197d145ff872edc4f484a9aea4fa71369aad3278779abc3c0bd6b2593287a735526afe1ab5b9f3841b0b23a6135d598360f486912db51d3e8773db95832c190b1fa3f1df390db778005df36fc841b91ad09c416b9113bf308044d9e8acea512e1931c198a5ec4058dd7e4bf51a50cad0818bfb0e09799ce1',
  ],
  ['sha256:16', 32, 'ef3696d54cbb6eae7440ff83a73a5b1c00000000000000000000000000000000'],
];

for (const [hash, keyBytes, hex] of HASH_ROUNDS) {
  test(`plain hash ${hash}, ${keyBytes}-byte key (hash rounds with "A" prefixes)`, () => {
    assert.equal(Buffer.from(plainHash(hash, keyBytes, PASS)).toString('hex'), hex);
  });
}

// os-brick's CryptsetupEncryptor: `cryptsetup create --key-file=- [--cipher C] [--key-size K]`
// fed the lowercase hex of the managed key. "-" is standard input: hashed with the default
// hash (no --hash is passed), the whole input, no newline handling.
const OSBRICK_HEX = '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f';
const OSBRICK: Array<[hash: string, keyBits: number, hex: string]> = [
  ['sha256', 256, '6c86c6aac5fb24bcf5d9939cb7d7d5645ce39418f449e03b262dd4fa14b4b92b'],
  ['sha256', 512, '6c86c6aac5fb24bcf5d9939cb7d7d5645ce39418f449e03b262dd4fa14b4b92b38299db37ecf9ebd94c76caaac1229820fd0cf214f14ce1fc343adc0180db026'],
  ['ripemd160', 256, '543317950f1817f3fc5152532a196b15d5e426136cd2393a8710011f6844a477'],
  ['ripemd160', 512, '543317950f1817f3fc5152532a196b15d5e426136cd2393a8710011f6844a4776d9fbc2fcddf5831ce433343688a0949d77b08cb412f2578fe45bf31c34783ee'],
];

for (const [hash, keyBits, hex] of OSBRICK) {
  test(`os-brick plain volume: hex passphrase on --key-file=-, ${hash} (cryptsetup ${hash === 'sha256' ? '2.7+' : '<2.7'} default), ${keyBits}-bit key`, async () => {
    const params = resolvePlainParams({ cipher: 'aes-xts-plain64', keyBits, ...(hash === PLAIN_DEFAULTS.hash ? {} : { hash }) });
    // Through standard input, as os-brick does it ...
    const viaStdin = await readPlainVolumeKey(params, { keyFile: '-' }, { input: Readable.from([Buffer.from(OSBRICK_HEX)]), output: process.stderr });
    assert.equal(Buffer.from(viaStdin.expose()).toString('hex'), hex);
    // ... and from the key manager, whose passphrase is the same hex.
    const viaManager = await readPlainVolumeKey(params, { managed: async () => Passphrase.fromString(OSBRICK_HEX) });
    assert.equal(Buffer.from(viaManager.expose()).toString('hex'), hex);
  });
}

test('which input is hashed: key files never, stdin and terminal with --hash (default sha256), "plain" never', () => {
  assert.equal(effectivePlainHash('key-file', undefined), undefined);
  assert.equal(effectivePlainHash('key-file', 'sha512'), undefined);
  assert.equal(effectivePlainHash('stdin', undefined), 'sha256');
  assert.equal(effectivePlainHash('stdin', 'ripemd160'), 'ripemd160');
  assert.equal(effectivePlainHash('terminal', undefined), 'sha256');
  assert.equal(effectivePlainHash('stdin-line', 'plain'), undefined);
  assert.equal(effectivePlainHash('terminal', 'plain'), undefined);
  assert.equal(effectivePlainHash('terminal', 'plain:16'), 'plain:16', '"plain:N" is a hash spec, only bare "plain" disables hashing');
});

test('how much is read: key size when not hashed from a named file, else --keyfile-size or up to 8 MiB', () => {
  assert.deepEqual(plainReadRule('key-file', undefined, 64, 10), { exactBytes: 64, maxBytes: 64, stopAtNewline: false, offsetAllowed: true });
  assert.deepEqual(plainReadRule('stdin', undefined, 32), { exactBytes: 32, maxBytes: 32, stopAtNewline: false, offsetAllowed: true });
  assert.deepEqual(plainReadRule('stdin', 'sha256', 32), { maxBytes: PLAIN_MAX_INPUT_BYTES, stopAtNewline: false, offsetAllowed: true });
  assert.deepEqual(plainReadRule('stdin', 'sha256', 32, 5), { exactBytes: 5, maxBytes: 5, stopAtNewline: false, offsetAllowed: true });
  assert.deepEqual(plainReadRule('stdin-line', undefined, 32), { maxBytes: PLAIN_MAX_INPUT_BYTES, stopAtNewline: true, offsetAllowed: true });
  assert.equal(plainReadRule('terminal', 'sha256', 32).offsetAllowed, false);
});

test('takePlainInput: first line, exact counts, limits', () => {
  const text = new Uint8Array(Buffer.from('line one\nline two\n'));
  const line = plainReadRule('stdin-line', 'sha256', 32);
  assert.equal(Buffer.from(takePlainInput(text, line)).toString(), 'line one');
  const whole = plainReadRule('stdin', 'sha256', 32);
  assert.equal(Buffer.from(takePlainInput(text, whole)).toString(), 'line one\nline two\n');
  assert.equal(Buffer.from(takePlainInput(text, plainReadRule('stdin', undefined, 4))).toString(), 'line');
  assert.throws(() => takePlainInput(text, plainReadRule('key-file', undefined, 64)), InvalidArgumentError);
  // A line shorter than --keyfile-size is an error, as in crypt_keyfile_device_read.
  assert.throws(() => takePlainInput(text, plainReadRule('stdin-line', 'sha256', 32, 12)), InvalidArgumentError);
});

test('no hash: the input is the key, zero-padded or truncated (process_key)', () => {
  assert.equal(Buffer.from(plainVolumeKey(new Uint8Array(Buffer.from('abc')), 8, undefined)).toString('hex'), '6162630000000000');
  assert.equal(Buffer.from(plainVolumeKey(new Uint8Array(Buffer.from('abcdefghij')), 4, undefined)).toString(), 'abcd');
  assert.equal(Buffer.from(plainHash('plain:2', 4, new Uint8Array(Buffer.from('xyz')))).toString('hex'), '78790000');
  assert.throws(() => plainHash('plain:4', 4, new Uint8Array(Buffer.from('xy'))), InvalidArgumentError);
  assert.throws(() => plainHash('sha256:40', 32, PASS), InvalidArgumentError);
  assert.throws(() => plainHash('sha256:x', 32, PASS), InvalidArgumentError);
  assert.throws(() => plainHash('whirlpool-nope', 32, PASS), UnsupportedError);
});

test('key files: the first key-size bytes after --keyfile-offset, --hash ignored, short files refused', async (t) => {
  const tmp = tempDir();
  t.after(tmp.cleanup);
  const file = join(tmp.dir, 'key.bin');
  const bytes = Buffer.alloc(100);
  for (let i = 0; i < bytes.length; i++) bytes[i] = i;
  writeFileSync(file, bytes);
  const params = resolvePlainParams({ keyBits: 512, hash: 'sha512' });
  const key = await readPlainVolumeKey(params, { keyFile: file, keyfileOffset: 10 });
  assert.deepEqual(Buffer.from(key.expose()), bytes.subarray(10, 74));
  // --keyfile-size is ignored without hashing: still the key size is read.
  const key2 = await readPlainVolumeKey(params, { keyFile: file, keyfileSize: 3 });
  assert.deepEqual(Buffer.from(key2.expose()), bytes.subarray(0, 64));
  await assert.rejects(readPlainVolumeKey(params, { keyFile: file, keyfileOffset: 40 }), InvalidArgumentError);
});

test('stdin with --hash plain must hold the whole key; with a hash, --keyfile-size cuts the input', async () => {
  const stdin = (text: string) => ({ input: Readable.from([Buffer.from(text)]), output: process.stderr });
  const direct = resolvePlainParams({ keyBits: 256, hash: 'plain' });
  await assert.rejects(readPlainVolumeKey(direct, { keyFile: '-' }, stdin('short')), InvalidArgumentError);
  const k = await readPlainVolumeKey(direct, { keyFile: '-' }, stdin('0123456789abcdef0123456789abcdefEXTRA'));
  assert.equal(Buffer.from(k.expose()).toString(), '0123456789abcdef0123456789abcdef');
  const hashed = resolvePlainParams({ keyBits: 256, hash: 'sha256' });
  const cut = await readPlainVolumeKey(hashed, { keyFile: '-', keyfileSize: 10 }, stdin('brickcryptTRAILING\n'));
  assert.equal(Buffer.from(cut.expose()).toString('hex'), HASH_ROUNDS[0]![2]);
});

test('without a key source and without a terminal: a usage error, nothing is read', async () => {
  const params = resolvePlainParams({});
  await assert.rejects(
    readPlainVolumeKey(params, {}, { input: Readable.from([Buffer.from('brickcrypt\n')]), output: process.stderr }),
    (err: unknown) => err instanceof InvalidArgumentError && /not a terminal/.test((err as Error).message),
  );
});
