/**
 * Pkcs11Kek against a real token: SoftHSM2 with its own token directory per run.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { needTools, run, tempDir } from '../helpers/tools.js';
import { Pkcs11Kek, DEFAULT_PKCS11_MODULE, type Pkcs11KekOptions } from '../../src/keys/kek/pkcs11-kek.js';
import { InvalidObjectError, KeyNotFoundError, WrongPassphraseError, InvalidArgumentError, NotFoundError } from '../../src/errors.js';
import { SecretBytes } from '../../src/secret.js';

const skip = needTools('softhsm2-util');
const TOKEN = 'brickcrypt-test';
const USER_PIN = '5678';
let tmp: { dir: string; cleanup: () => void } | undefined;
let pinFile = '';
const savedConf = process.env.SOFTHSM2_CONF;

before(() => {
  if (skip) return;
  tmp = tempDir('brickcrypt-softhsm-');
  const tokens = join(tmp.dir, 'tokens');
  mkdirSync(tokens);
  const conf = join(tmp.dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = conf;
  run('softhsm2-util', ['--init-token', '--free', '--label', TOKEN, '--so-pin', '1234', '--pin', USER_PIN], { env: process.env });
  pinFile = join(tmp.dir, 'pin');
  writeFileSync(pinFile, USER_PIN + '\n', { mode: 0o600 });
});

after(() => {
  if (savedConf === undefined) delete process.env.SOFTHSM2_CONF;
  else process.env.SOFTHSM2_CONF = savedConf;
  tmp?.cleanup();
});

const opts = (over: Partial<Pkcs11KekOptions> = {}): Pkcs11KekOptions => ({ tokenLabel: TOKEN, pinFile, keyLabel: 'kek-a', ...over });

test('init creates the key; wrap/unwrap round trip; fresh IV per wrap', { skip }, async () => {
  const kek = await Pkcs11Kek.init(opts());
  try {
    assert.equal(kek.id, `pkcs11:${TOKEN}/kek-a`);
    for (const len of [1, 32, 64, 1000]) {
      const plain = new Uint8Array(len).map((_, i) => (i * 7 + len) & 0xff);
      const aad = new TextEncoder().encode(`object-${len}`);
      const a = await kek.wrap(plain, aad);
      const b = await kek.wrap(plain, aad);
      assert.equal(a.length, 1 + 12 + len + 16);
      assert.equal(a[0], 1);
      assert.notDeepEqual(a, b, 'two wraps of the same input must differ (random IV)');
      if (len > 0) assert.notDeepEqual(a.subarray(13, 13 + len), plain);
      assert.deepEqual(await kek.unwrap(a, aad), plain);
      assert.deepEqual(await kek.unwrap(b, aad), plain);
    }
    await assert.rejects(kek.wrap(new Uint8Array(0), new Uint8Array(0)), InvalidArgumentError);
  } finally {
    await kek.close();
  }
});

test('tampered blobs, wrong aad and another KEK are rejected with InvalidObjectError', { skip }, async () => {
  const kek = await Pkcs11Kek.init(opts());
  const other = await Pkcs11Kek.init(opts({ keyLabel: 'kek-b' }));
  try {
    const plain = new Uint8Array(32).fill(0xa5);
    const aad = new TextEncoder().encode('id=1;owner=p');
    const blob = await kek.wrap(plain, aad);
    const cases: Array<[string, Uint8Array, Uint8Array, Pkcs11Kek]> = [
      ['flipped ciphertext byte', flip(blob, 13), aad, kek],
      ['flipped IV byte', flip(blob, 1), aad, kek],
      ['flipped tag byte', flip(blob, blob.length - 1), aad, kek],
      ['version byte changed', withByte(blob, 0, 2), aad, kek],
      ['truncated', blob.subarray(0, 20), aad, kek],
      ['other aad', blob, new TextEncoder().encode('id=2;owner=p'), kek],
      ['empty aad', blob, new Uint8Array(0), kek],
      ['another KEK', blob, aad, other],
    ];
    for (const [name, b, a, k] of cases) {
      await assert.rejects(k.unwrap(b, a), InvalidObjectError, name);
    }
    // The session stays usable after a failed GCM check.
    assert.deepEqual(await kek.unwrap(blob, aad), plain);
  } finally {
    await kek.close();
    await other.close();
  }
});

test('a second provider (own session) and a re-initialised module unwrap what the first wrapped', { skip }, async () => {
  const first = await Pkcs11Kek.init(opts());
  const aad = new TextEncoder().encode('aad');
  const plain = new Uint8Array(64).map((_, i) => i);
  const blob = await first.wrap(plain, aad);
  const second = await Pkcs11Kek.open(opts({ pinFile: undefined, pin: SecretBytes.copyOf(new TextEncoder().encode(USER_PIN)) }));
  assert.deepEqual(await second.unwrap(blob, aad), plain);
  await first.close();
  // The second session keeps working after the first closed.
  assert.deepEqual(await second.unwrap(blob, aad), plain);
  await second.close();
  // All sessions closed: the module is finalised; a fresh open reads the key back from the token store.
  process.env.BRICKCRYPT_TEST_PIN = USER_PIN;
  try {
    const third = await Pkcs11Kek.open(opts({ pinFile: undefined, pinEnv: 'BRICKCRYPT_TEST_PIN' }));
    assert.deepEqual(await third.unwrap(blob, aad), plain);
    await third.close();
    await assert.rejects(third.wrap(plain, aad), InvalidArgumentError, 'a closed provider refuses work');
  } finally {
    delete process.env.BRICKCRYPT_TEST_PIN;
  }
});

test('the key is non-extractable: reading CKA_VALUE is refused with CKR_ATTRIBUTE_SENSITIVE', { skip }, async () => {
  await (await Pkcs11Kek.init(opts())).close();
  // Talk to the token directly (no provider is open, so this process may initialise the module).
  const require = createRequire(import.meta.url);
  const p11 = require('pkcs11js');
  const lib = new p11.PKCS11();
  lib.load(DEFAULT_PKCS11_MODULE);
  lib.C_Initialize();
  try {
    const slot = lib.C_GetSlotList(true).find((s: Buffer) => lib.C_GetTokenInfo(s).label.trim() === TOKEN);
    const session = lib.C_OpenSession(slot, p11.CKF_SERIAL_SESSION | p11.CKF_RW_SESSION);
    lib.C_Login(session, p11.CKU_USER, USER_PIN);
    lib.C_FindObjectsInit(session, [{ type: p11.CKA_LABEL, value: 'kek-a' }]);
    const [key] = lib.C_FindObjects(session, 1);
    lib.C_FindObjectsFinal(session);
    assert.ok(key, 'the KEK is stored on the token');
    const attrs = lib.C_GetAttributeValue(session, key, [{ type: p11.CKA_SENSITIVE }, { type: p11.CKA_EXTRACTABLE }, { type: p11.CKA_TOKEN }]);
    assert.deepEqual(attrs.map((a: { value: Buffer }) => a.value[0]), [1, 0, 1]);
    assert.throws(() => lib.C_GetAttributeValue(session, key, [{ type: p11.CKA_VALUE }]), /CKR_ATTRIBUTE_SENSITIVE/);
    lib.C_CloseSession(session);
  } finally {
    lib.C_Finalize();
    lib.close();
  }
});

test('configuration errors are typed', { skip }, async () => {
  await assert.rejects(Pkcs11Kek.open(opts({ keyLabel: 'absent' })), KeyNotFoundError);
  const badPin = join(tmp!.dir, 'bad-pin');
  writeFileSync(badPin, '0000');
  await assert.rejects(Pkcs11Kek.open(opts({ pinFile: badPin })), WrongPassphraseError);
  await assert.rejects(Pkcs11Kek.open(opts({ tokenLabel: 'no-such-token' })), NotFoundError);
  await assert.rejects(Pkcs11Kek.open(opts({ pinFile: join(tmp!.dir, 'missing') })), NotFoundError);
  await assert.rejects(Pkcs11Kek.open(opts({ pinEnv: 'X' })), InvalidArgumentError, 'two PIN sources');
  await assert.rejects(Pkcs11Kek.open({ pinFile, keyLabel: 'k' }), InvalidArgumentError, 'no token or slot');
  // A successful open after the failures proves the module reference counts stayed balanced.
  const kek = await Pkcs11Kek.open(opts());
  await kek.close();
});

function flip(b: Uint8Array, i: number): Uint8Array {
  const c = new Uint8Array(b);
  c[i]! ^= 0x01;
  return c;
}

function withByte(b: Uint8Array, i: number, v: number): Uint8Array {
  const c = new Uint8Array(b);
  c[i] = v;
  return c;
}
