/** Unit tests: passphraseForLuks, the KEK blob layout, retry policy, identity loading, URI parsing, policy table. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDecipheriv } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BackendUnavailableError, ForbiddenError, InvalidArgumentError, InvalidObjectError, KeyNotFoundError, NotFoundError } from '../../src/errors.js';
import { Passphrase, SecretBytes } from '../../src/secret.js';
import type { ManagedObject, ObjectType } from '../../src/keys/key-manager.js';
import { passphraseForLuks } from '../../src/keys/luks-passphrase.js';
import { AesGcmKek } from '../../src/keys/kek/aes-gcm-kek.js';
import { isTransientError, withRetry } from '../../src/keys/retry.js';
import { loadCallerIdentity } from '../../src/keys/identity.js';
import { openKeyManager, parseKeyManagerUri } from '../../src/keys/open-key-manager.js';
import { decide, type Operation } from '../../src/keys/policy.js';
import { tempDir } from '../helpers/tools.js';

function obj(type: ObjectType, bytes: Uint8Array): ManagedObject {
  return { id: 'x', type, created: new Date().toISOString(), owner: { user: 'u', project: 'p' }, consumers: [], secret: SecretBytes.copyOf(bytes) };
}

const HEX_CASES: Array<[string, string]> = [
  ['00', '00'],
  ['0001', '0001'],
  ['000000ff', '000000ff'],
  ['0a0b0c', '0a0b0c'],
  ['ff00ee00', 'ff00ee00'],
  ['DEADBEEF', 'deadbeef'],
];

test('passphraseForLuks: symmetric keys become lowercase hex, two digits per byte (leading zeros kept)', () => {
  for (const [hexIn, expected] of HEX_CASES) {
    const p = passphraseForLuks(obj('symmetric', Buffer.from(hexIn, 'hex')));
    assert.ok(p instanceof Passphrase);
    assert.equal(Buffer.from(p.expose()).toString('latin1'), expected);
  }
  const key = new Uint8Array(32);
  key[31] = 1;
  const p = passphraseForLuks(obj('symmetric', key));
  assert.equal(p.length, 64);
  assert.equal(Buffer.from(p.expose()).toString('latin1'), '0'.repeat(62) + '01');
});

test('passphraseForLuks: passphrase objects are their bytes; other types are InvalidObjectError', () => {
  const p = passphraseForLuks(obj('passphrase', Buffer.from('grüße\n', 'utf8')));
  assert.equal(Buffer.from(p.expose()).toString('utf8'), 'grüße\n');
  for (const t of ['opaque', 'certificate', 'private', 'public'] as const) {
    assert.throws(() => passphraseForLuks(obj(t, new Uint8Array([1, 2]))), InvalidObjectError);
  }
});

test('AES-GCM KEK blob: version, nonce, ciphertext, tag at the documented offsets; AAD bound', async () => {
  const keyBytes = Buffer.alloc(32, 7);
  const kek = new AesGcmKek('t', SecretBytes.copyOf(keyBytes));
  const plain = Buffer.from('0123456789abcdef0123456789abcdef');
  const aad = Buffer.from('id\0p\0u\0symmetric');
  const blob = Buffer.from(await kek.wrap(plain, aad));
  assert.equal(blob.length, 1 + 12 + plain.length + 16);
  assert.equal(blob[0], 1);
  const d = createDecipheriv('aes-256-gcm', keyBytes, blob.subarray(1, 13));
  d.setAAD(aad);
  d.setAuthTag(blob.subarray(13 + plain.length));
  assert.deepEqual(Buffer.concat([d.update(blob.subarray(13, 13 + plain.length)), d.final()]), plain);
  assert.notDeepEqual(Buffer.from(await kek.wrap(plain, aad)), blob, 'fresh nonce per wrap');
  assert.deepEqual(Buffer.from(await kek.unwrap(blob, aad)), plain);
  await assert.rejects(kek.unwrap(blob, Buffer.from('id\0p\0u\0opaque')), InvalidObjectError);
  for (const i of [0, 5, 20, blob.length - 1]) {
    const bad = Buffer.from(blob);
    bad[i]! ^= 0x40;
    await assert.rejects(kek.unwrap(bad, aad), InvalidObjectError, `flipped byte ${i}`);
  }
  await assert.rejects(kek.unwrap(blob.subarray(0, 20), aad), InvalidObjectError);
  await assert.rejects(new AesGcmKek('t', SecretBytes.random(32)).unwrap(blob, aad), InvalidObjectError, 'other KEK');
  assert.throws(() => new AesGcmKek('t', SecretBytes.random(16)), InvalidArgumentError);
});

test('withRetry: retries transient failures with backoff, stops at policy errors, wraps exhaustion', async () => {
  let calls = 0;
  const value = await withRetry(
    async () => {
      if (++calls < 3) throw Object.assign(new Error('refused'), { code: 'ECONNREFUSED' });
      return 'ok';
    },
    { attempts: 4, baseDelayMs: 1 },
  );
  assert.deepEqual([value, calls], ['ok', 3]);

  calls = 0;
  await assert.rejects(
    withRetry(async () => {
      calls++;
      throw new ForbiddenError('no');
    }, { attempts: 5, baseDelayMs: 1 }),
    ForbiddenError,
  );
  assert.equal(calls, 1, 'policy errors are not retried');

  calls = 0;
  await assert.rejects(
    withRetry(async () => {
      calls++;
      throw Object.assign(new Error('reset'), { code: 'ECONNRESET' });
    }, { attempts: 3, baseDelayMs: 1, what: 'kmip Get' }),
    (err: unknown) => err instanceof BackendUnavailableError && /kmip Get: .*after 3 attempt/.test(err.message) && (err.cause as Error).message === 'reset',
  );
  assert.equal(calls, 3);

  // A hanging attempt times out, its signal fires, and the next attempt runs.
  const signals: AbortSignal[] = [];
  calls = 0;
  const r = await withRetry(
    (signal) => {
      signals.push(signal);
      return ++calls === 1 ? new Promise<string>(() => undefined) : Promise.resolve('second');
    },
    { attempts: 2, timeoutMs: 30, baseDelayMs: 1 },
  );
  assert.equal(r, 'second');
  assert.equal(signals[0]!.aborted, true);
  assert.equal(isTransientError(new KeyNotFoundError('x')), false);
  assert.equal(isTransientError(new BackendUnavailableError('503')), true);
});

test('loadCallerIdentity: explicit flags, profile file, $BRICKCRYPT_PROFILE, and defaults', () => {
  const t = tempDir();
  try {
    const f = join(t.dir, 'cinder.json');
    writeFileSync(f, JSON.stringify({ user: 'cinder', project: 'svc', roles: ['creator'] }));
    assert.deepEqual(loadCallerIdentity({ profile: f, env: {} }), { user: 'cinder', project: 'svc', roles: ['creator'] });
    assert.deepEqual(loadCallerIdentity({ env: { BRICKCRYPT_PROFILE: f } }), { user: 'cinder', project: 'svc', roles: ['creator'] });
    assert.deepEqual(loadCallerIdentity({ profile: f, roles: 'reader, admin', env: {} }), { user: 'cinder', project: 'svc', roles: ['reader', 'admin'] });
    assert.deepEqual(loadCallerIdentity({ user: 'nova', project: 'p1', roles: 'reader', env: {} }), { user: 'nova', project: 'p1', roles: ['reader'] });
    const def = loadCallerIdentity({ env: {} });
    assert.deepEqual([def.project, def.roles], ['default', ['admin']]);
    const noRoles = join(t.dir, 'noroles.json');
    writeFileSync(noRoles, JSON.stringify({ user: 'x', project: 'y' }));
    assert.deepEqual(loadCallerIdentity({ profile: noRoles, env: {} }).roles, [], 'a profile without roles grants none');
    writeFileSync(join(t.dir, 'bad.json'), '{"user": 5}');
    assert.throws(() => loadCallerIdentity({ profile: join(t.dir, 'bad.json'), env: {} }), InvalidArgumentError);
    writeFileSync(join(t.dir, 'notjson.json'), 'user=x');
    assert.throws(() => loadCallerIdentity({ profile: join(t.dir, 'notjson.json'), env: {} }), InvalidArgumentError);
    assert.throws(() => loadCallerIdentity({ profile: join(t.dir, 'missing.json'), env: {} }), NotFoundError);
  } finally {
    t.cleanup();
  }
});

test('parseKeyManagerUri and openKeyManager', async () => {
  const env = { BRICKCRYPT_HOME: '/srv/bc' };
  assert.deepEqual(parseKeyManagerUri('local:', env), { kind: 'local', path: '/srv/bc/keystore.db' });
  assert.deepEqual(parseKeyManagerUri('local:/a/b.db', env), { kind: 'local', path: '/a/b.db' });
  assert.deepEqual(parseKeyManagerUri('memory:', env), { kind: 'memory' });
  assert.deepEqual(parseKeyManagerUri('barbican+http://127.0.0.1:9311', env), { kind: 'barbican', url: 'http://127.0.0.1:9311' });
  assert.deepEqual(parseKeyManagerUri('barbican+https://kms.example:9311', env), { kind: 'barbican', url: 'https://kms.example:9311' });
  assert.deepEqual(parseKeyManagerUri('kmip://10.0.0.5:5696', env), { kind: 'kmip', host: '10.0.0.5', port: 5696 });
  assert.deepEqual(parseKeyManagerUri('kmip://kms', env), { kind: 'kmip', host: 'kms', port: 5696 });
  for (const bad of ['vault://x', 'barbican+ftp://x', 'kmip:', 'http://x']) assert.throws(() => parseKeyManagerUri(bad, env), InvalidArgumentError, bad);
  const mem = await openKeyManager('memory:');
  assert.equal(mem.backend, 'memory');
  await mem.close();
  const t = tempDir();
  try {
    const local = await openKeyManager(`local:${join(t.dir, 'k.db')}`, { init: true });
    assert.equal(local.backend, 'local');
    await local.close();
    await assert.rejects(openKeyManager(`local:${join(t.dir, 'none.db')}`), NotFoundError);
  } finally {
    t.cleanup();
  }
  // The Barbican backend is loaded on demand and does not connect before the first call.
  const barbican = await openKeyManager('barbican+http://127.0.0.1:9', { timeoutMs: 500, attempts: 1 });
  assert.equal(barbican.backend, 'barbican');
  await barbican.close();
});

test('policy table: each role against each operation', () => {
  const own = { owner: { user: 'cinder', project: 'p' }, readers: ['nova'] };
  const rows: Array<[string, Operation, boolean]> = [
    ['creator', 'createKey', true],
    ['creator', 'get', false],
    ['creator', 'getMetadata', true],
    ['creator', 'clone', true],
    ['creator', 'delete', true],
    ['creator', 'audit', false],
    ['reader', 'createKey', false],
    ['reader', 'get', true],
    ['reader', 'delete', false],
    ['reader', 'clone', false],
    ['reader', 'grantRead', false],
    ['member', 'get', true],
    ['member', 'createKey', true],
    ['member', 'grantRead', false],
    ['member', 'audit', false],
    ['admin', 'get', true],
    ['admin', 'grantRead', true],
    ['admin', 'rotateKek', true],
    ['observer', 'list', false],
  ];
  for (const [role, op, allowed] of rows) {
    const user = role === 'reader' ? 'nova' : 'someone';
    const subject = ['createKey', 'list', 'audit', 'rotateKek'].includes(op) ? undefined : own;
    assert.equal(decide({ user, project: 'p', roles: [role] }, op, subject).allowed, allowed, `${role} ${op}`);
  }
  assert.equal(decide({ user: 'cinder', project: 'p', roles: ['creator'] }, 'grantRead', own).allowed, true, 'owner creator grants');
  assert.equal(decide({ user: 'other', project: 'p', roles: ['reader'] }, 'get', own).allowed, false, 'ungranted reader');
  const cross = decide({ user: 'nova', project: 'q', roles: ['admin', 'reader'] }, 'get', own);
  assert.deepEqual([cross.allowed, !cross.allowed && cross.hidden], [false, true]);
});
