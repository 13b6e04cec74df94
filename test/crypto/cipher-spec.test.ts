import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cipherSpecStrings, parseCipherSpec, parseEncryption, validKeyLengths, type CipherSpec } from '../../src/crypto/cipher-spec.js';
import { digest, hashInfo, isHashSupported, supportedHashes } from '../../src/crypto/hash.js';
import { InvalidArgumentError, UnsupportedCipherError, UnsupportedError } from '../../src/errors.js';

const PARSE: Array<[string, string, CipherSpec]> = [
  ['aes', 'xts-plain64', { cipher: 'aes', mode: 'xts', ivGen: 'plain64' }],
  ['aes', 'xts-plain', { cipher: 'aes', mode: 'xts', ivGen: 'plain' }],
  ['aes', 'cbc-essiv:sha256', { cipher: 'aes', mode: 'cbc', ivGen: 'essiv', ivHash: 'sha256' }],
  ['aes', 'cbc-plain', { cipher: 'aes', mode: 'cbc', ivGen: 'plain' }],
  ['aes', 'cbc-plain64', { cipher: 'aes', mode: 'cbc', ivGen: 'plain64' }],
  ['aes', 'cbc-null', { cipher: 'aes', mode: 'cbc', ivGen: 'null' }],
  ['aes', 'ecb', { cipher: 'aes', mode: 'ecb', ivGen: 'null' }],
  ['aes', 'xts-essiv:sha256', { cipher: 'aes', mode: 'xts', ivGen: 'essiv', ivHash: 'sha256' }],
  ['AES', 'CBC-ESSIV:SHA256', { cipher: 'aes', mode: 'cbc', ivGen: 'essiv', ivHash: 'sha256' }],
];

test('LUKS1 cipher-name/cipher-mode pairs parse, and print back in both forms', () => {
  for (const [name, mode, spec] of PARSE) {
    assert.deepEqual(parseCipherSpec(name, mode), spec, `${name} ${mode}`);
    const strings = cipherSpecStrings(spec);
    assert.equal(strings.cipherName, name.toLowerCase());
    assert.equal(strings.cipherMode, mode.toLowerCase());
    assert.equal(strings.encryption, `${name}-${mode}`.toLowerCase());
    assert.deepEqual(parseEncryption(strings.encryption), spec);
    assert.deepEqual(parseCipherSpec(strings.cipherName, strings.cipherMode), spec);
  }
});

test('LUKS2 encryption strings parse', () => {
  assert.deepEqual(parseEncryption('aes-xts-plain64'), { cipher: 'aes', mode: 'xts', ivGen: 'plain64' });
  assert.deepEqual(parseEncryption('aes-cbc-essiv:sha256', 32), { cipher: 'aes', mode: 'cbc', ivGen: 'essiv', ivHash: 'sha256', keyBytes: 32 });
  assert.deepEqual(parseEncryption('aes-xts-plain64', 64).keyBytes, 64);
});

test('key sizes: XTS 32/64 bytes, CBC/ECB 16/24/32 bytes', () => {
  assert.deepEqual(validKeyLengths(parseEncryption('aes-xts-plain64')), [32, 64]);
  assert.deepEqual(validKeyLengths(parseEncryption('aes-cbc-plain')), [16, 24, 32]);
  for (const k of [16, 24, 48, 128]) assert.throws(() => parseEncryption('aes-xts-plain64', k), UnsupportedCipherError);
  for (const k of [8, 64]) assert.throws(() => parseEncryption('aes-cbc-essiv:sha256', k), UnsupportedCipherError);
});

const UNSUPPORTED: Array<[string, string, string]> = [
  ['serpent', 'xts-plain64', 'serpent'],
  ['twofish', 'xts-plain64', 'twofish'],
  ['cast5', 'cbc-plain', 'cast5'],
  ['aes', 'lrw-benbi', 'lrw'],
  ['aes', 'cbc-lmk', 'lmk'],
  ['aes', 'cbc-tcw', 'tcw'],
  ['aes', 'xts-benbi', 'benbi'],
  ['aes', 'xts-random', 'random'],
  ['aes', 'ctr-plain64', 'ctr'],
  ['aes', 'cbc-essiv:whirlpool', 'whirlpool'],
  ['aes', 'cbc-essiv:sha1', 'sha1'], // 20-byte salt is no AES key
  ['aes', 'cbc-essiv:sha512', 'sha512'],
  ['aes', 'cbc-essiv', 'essiv'],
  ['aes', 'xts', 'xts'],
  ['aes', 'ecb-plain64', 'ecb'],
  ['aes', 'xts-plain64:sha256', 'plain64'],
  ['cipher_null', 'ecb', 'cipher_null'],
];

test('unsupported ciphers, modes and IV generators raise UnsupportedCipherError naming them', () => {
  for (const [name, mode, word] of UNSUPPORTED) {
    assert.throws(
      () => parseCipherSpec(name, mode),
      (e: unknown) => e instanceof UnsupportedCipherError && e.code === 'UNSUPPORTED_CIPHER' && e.cipher.includes(word) && e.message.includes(word),
      `${name}-${mode}`,
    );
  }
  for (const text of ['capi:xts(aes)-plain64', 'aes:64-cbc-lmk', 'serpent-xts-plain64', 'aes']) {
    assert.throws(() => parseEncryption(text), UnsupportedCipherError, text);
  }
  assert.throws(() => parseCipherSpec('', 'xts-plain64'), InvalidArgumentError);
  assert.throws(() => parseCipherSpec('aes', ''), InvalidArgumentError);
});

const HASHES: Array<[string, number]> = [
  ['sha1', 20],
  ['sha224', 28],
  ['sha256', 32],
  ['sha384', 48],
  ['sha512', 64],
  ['ripemd160', 20],
];

test('hash table: digest sizes, case-insensitive names, digests equal node createHash', () => {
  for (const [name, size] of HASHES) {
    assert.deepEqual(hashInfo(name), { name, digestSize: size });
    assert.equal(hashInfo(name.toUpperCase()).name, name);
    assert.ok(isHashSupported(name));
    assert.ok(supportedHashes().includes(name));
    const a = new Uint8Array([1, 2, 3]);
    const b = new Uint8Array([4, 5]);
    const d = digest(name, a, b);
    assert.equal(d.length, size);
    assert.deepEqual(Buffer.from(d), createHash(name).update(Buffer.from([1, 2, 3, 4, 5])).digest());
  }
});

test('unknown hashes raise UnsupportedError naming the hash', () => {
  for (const name of ['whirlpool', 'stribog512', 'sha3-1000', 'crc32c', '']) {
    assert.equal(isHashSupported(name), false);
    assert.throws(() => hashInfo(name), (e: unknown) => e instanceof UnsupportedError && e.code === 'UNSUPPORTED' && e.message.includes(name));
  }
});
