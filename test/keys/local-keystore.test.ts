/**
 * The local keystore: KEK handling (file, passphrase, external provider), tamper
 * detection, atomic KEK rotation, audit chain, and two processes sharing one file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, statSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { AlreadyExistsError, InvalidArgumentError, InvalidObjectError, NotFoundError, WrongPassphraseError } from '../../src/errors.js';
import { Passphrase, SecretBytes } from '../../src/secret.js';
import { LocalKeyManager } from '../../src/keys/local-key-manager.js';
import { MemoryKeyManager } from '../../src/keys/memory-key-manager.js';
import { AesGcmKek } from '../../src/keys/kek/aes-gcm-kek.js';
import type { KekProvider } from '../../src/keys/kek/kek-provider.js';
import { verifyAuditChain } from '../../src/keys/audit.js';
import { tempDir } from '../helpers/tools.js';

const admin = { user: 'ops', project: 'p1', roles: ['admin'] };
const fastArgon = { memoryKiB: 8192, timeCost: 1, parallelism: 1 };

test('init creates a 0600 KEK file and a 0600 keystore; keys survive reopen', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'home', 'keystore.db');
    const km = await LocalKeyManager.init(db);
    assert.deepEqual(km.kekInfo(), { kind: 'file', id: 'file', file: join(t.dir, 'home', 'keystore.kek') });
    assert.equal(statSync(join(t.dir, 'home', 'keystore.kek')).mode & 0o777, 0o600);
    assert.equal(statSync(db).mode & 0o777, 0o600);
    assert.equal(statSync(join(t.dir, 'home', 'keystore.kek')).size, 32);
    const { id, key } = await km.createKey(admin);
    await km.close();
    await assert.rejects(LocalKeyManager.init(db), AlreadyExistsError);
    const again = await LocalKeyManager.open(db);
    const obj = await again.get(admin, id);
    assert.ok(obj.secret.equals(key));
    await again.close();
    // The wrapped bytes in the file are not the key.
    const raw = new Database(db, { readonly: true });
    const row = raw.prepare('SELECT wrapped FROM objects WHERE id = ?').get(id) as { wrapped: Buffer };
    raw.close();
    assert.equal(row.wrapped.includes(Buffer.from(key.expose())), false);
    assert.equal(row.wrapped.length, 1 + 12 + 32 + 16);
    await assert.rejects(LocalKeyManager.open(join(t.dir, 'nope.db')), NotFoundError);
  } finally {
    t.cleanup();
  }
});

test('a KEK file readable by others is refused; a wrong KEK file is WrongPassphraseError', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'ks.db');
    await (await LocalKeyManager.init(db, { kekFile: join(t.dir, 'a.kek') })).close();
    chmodSync(join(t.dir, 'a.kek'), 0o644);
    await assert.rejects(LocalKeyManager.open(db), InvalidArgumentError);
    chmodSync(join(t.dir, 'a.kek'), 0o600);
    writeFileSync(join(t.dir, 'b.kek'), SecretBytes.random(32).expose(), { mode: 0o600 });
    await assert.rejects(LocalKeyManager.open(db, { kekFile: join(t.dir, 'b.kek') }), WrongPassphraseError);
    await (await LocalKeyManager.open(db)).close();
  } finally {
    t.cleanup();
  }
});

test('passphrase KEK (Argon2id): right passphrase opens, wrong one is WrongPassphraseError, params are stored', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'ks.db');
    const km = await LocalKeyManager.init(db, { kekPassphrase: Passphrase.fromString('kek pass'), argon2: fastArgon });
    const { id, key } = await km.createKey(admin);
    await km.close();
    const raw = new Database(db, { readonly: true });
    const params = JSON.parse((raw.prepare("SELECT value FROM meta WHERE key = 'argon2'").get() as { value: string }).value);
    raw.close();
    assert.equal(params.memoryKiB, 8192);
    assert.equal(Buffer.from(params.salt, 'base64').length, 16);
    await assert.rejects(LocalKeyManager.open(db, { kekPassphrase: Passphrase.fromString('kek pasS') }), WrongPassphraseError);
    await assert.rejects(LocalKeyManager.open(db), InvalidArgumentError, 'no passphrase given');
    const km2 = await LocalKeyManager.open(db, { kekPassphrase: Passphrase.fromString('kek pass') });
    assert.ok((await km2.get(admin, id)).secret.equals(key));
    await km2.close();
  } finally {
    t.cleanup();
  }
});

test('tampered or swapped wrapped secrets are InvalidObjectError, and the failure is audited', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'ks.db');
    const km = await LocalKeyManager.init(db);
    const a = await km.createKey(admin);
    const b = await km.createKey(admin);
    const c = await km.createKey(admin);
    const raw = new Database(db);
    const wrapped = (id: string) => (raw.prepare('SELECT wrapped FROM objects WHERE id = ?').get(id) as { wrapped: Buffer }).wrapped;
    // Swap a's blob into b's row: AAD binds the id, so it no longer unwraps.
    raw.prepare('UPDATE objects SET wrapped = ? WHERE id = ?').run(wrapped(a.id), b.id);
    // Flip one ciphertext bit in c.
    const wc = Buffer.from(wrapped(c.id));
    wc[20]! ^= 1;
    raw.prepare('UPDATE objects SET wrapped = ? WHERE id = ?').run(wc, c.id);
    // Move a to another owner: AAD binds the owner too.
    raw.prepare("UPDATE objects SET owner_user = 'mallory' WHERE id = ?").run(a.id);
    raw.close();
    await assert.rejects(km.get(admin, b.id), InvalidObjectError);
    await assert.rejects(km.get(admin, c.id), InvalidObjectError);
    await assert.rejects(km.get(admin, a.id), InvalidObjectError);
    await assert.rejects(km.clone(admin, c.id), InvalidObjectError, 'clone unwraps too');
    const log = await km.readAudit(admin);
    const last = log.at(-1)!;
    assert.deepEqual([last.operation, last.outcome, last.code], ['clone', 'failed', 'INVALID_OBJECT']);
    await km.close();
    for (const k of [a, b, c]) k.key.wipe();
  } finally {
    t.cleanup();
  }
});

/** A KEK that fails on its Nth wrap, to interrupt a rotation. */
class FailingKek implements KekProvider {
  readonly id = 'failing';
  #inner = new AesGcmKek('failing', SecretBytes.random(32));
  #left: number;
  constructor(failAfter: number) {
    this.#left = failAfter;
  }
  async wrap(p: Uint8Array, aad: Uint8Array) {
    if (this.#left-- <= 0) throw new Error('token removed');
    return this.#inner.wrap(p, aad);
  }
  unwrap(w: Uint8Array, aad: Uint8Array) {
    return this.#inner.unwrap(w, aad);
  }
  close() {
    return this.#inner.close();
  }
}

test('KEK rotation re-wraps everything; a failure half-way leaves every object under the old KEK', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'ks.db');
    const km = await LocalKeyManager.init(db, { kekFile: join(t.dir, 'old.kek') });
    const keys = [];
    for (let i = 0; i < 6; i++) keys.push(await km.createKey(admin, { name: `k${i}` }));
    const blobs = () => {
      const raw = new Database(db, { readonly: true });
      const rows = raw.prepare('SELECT id, wrapped FROM objects ORDER BY id').all();
      raw.close();
      return rows;
    };
    const before = blobs();
    // makeCheck wraps once, then 6 objects: fail at the 4th object.
    await assert.rejects(km.rotateKek(admin, { kind: 'external', provider: new FailingKek(4) }), /token removed/);
    assert.deepEqual(blobs(), before, 'nothing changed on disk');
    for (const k of keys) assert.ok((await km.get(admin, k.id)).secret.equals(k.key));
    await km.close();
    const reopened = await LocalKeyManager.open(db);
    for (const k of keys) assert.ok((await reopened.get(admin, k.id)).secret.equals(k.key), 'old KEK still opens all');
    // Now a real rotation to a new key file.
    await reopened.rotateKek(admin, { kind: 'file', file: join(t.dir, 'new.kek') });
    assert.equal(statSync(join(t.dir, 'new.kek')).mode & 0o777, 0o600);
    for (const k of keys) assert.ok((await reopened.get(admin, k.id)).secret.equals(k.key));
    await reopened.close();
    const after = blobs() as Array<{ wrapped: Buffer }>;
    assert.ok(after.every((r, i) => !r.wrapped.equals((before[i] as { wrapped: Buffer }).wrapped)), 'every blob re-wrapped');
    await assert.rejects(LocalKeyManager.open(db, { kekFile: join(t.dir, 'old.kek') }), WrongPassphraseError);
    const km3 = await LocalKeyManager.open(db);
    assert.equal(km3.kekInfo().file, join(t.dir, 'new.kek'));
    for (const k of keys) assert.ok((await km3.get(admin, k.id)).secret.equals(k.key));
    // Rotation to a passphrase, then it needs the passphrase.
    await km3.rotateKek(admin, { kind: 'passphrase', passphrase: Passphrase.fromString('pp'), argon2: fastArgon });
    await km3.close();
    await assert.rejects(LocalKeyManager.open(db), InvalidArgumentError);
    const km4 = await LocalKeyManager.open(db, { kekPassphrase: Passphrase.fromString('pp') });
    for (const k of keys) assert.ok((await km4.get(admin, k.id)).secret.equals(k.key));
    await assert.rejects(km4.rotateKek({ user: 'c', project: 'p1', roles: ['creator'] }, { kind: 'file', file: join(t.dir, 'x.kek') }), /may not rotateKek/);
    const rot = (await km4.readAudit(admin)).filter((e) => e.operation === 'rotateKek').map((e) => e.outcome);
    assert.deepEqual(rot, ['failed', 'allowed', 'allowed', 'denied']);
    await km4.close();
  } finally {
    t.cleanup();
  }
});

test('audit chain: verify passes, and detects a modified, deleted or re-hashed row', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'ks.db');
    const km = await LocalKeyManager.init(db);
    for (let i = 0; i < 4; i++) (await km.createKey(admin)).key.wipe();
    await assert.rejects(km.get({ user: 'c', project: 'p1', roles: ['creator'] }, (await km.list(admin))[0]!.id));
    const ok = await km.verifyAudit(admin);
    assert.equal(ok.ok, true);
    assert.equal(ok.entries, 6);
    await km.close();
    const raw = new Database(db);
    assert.throws(() => raw.prepare("UPDATE audit SET user = 'x' WHERE seq = 2").run(), /append-only/);
    assert.throws(() => raw.prepare('DELETE FROM audit WHERE seq = 2').run(), /append-only/);
    raw.exec('DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete');
    raw.prepare("UPDATE audit SET outcome = 'allowed' WHERE seq = 6").run();
    raw.close();
    const km2 = await LocalKeyManager.open(db);
    const bad = await km2.verifyAudit(admin);
    assert.equal(bad.ok, false);
    assert.equal(bad.firstBad, 6);
    await km2.close();
    const raw2 = new Database(db);
    raw2.prepare('DELETE FROM audit WHERE seq = 3').run();
    raw2.close();
    const km3 = await LocalKeyManager.open(db);
    const gap = await km3.verifyAudit(admin);
    assert.equal(gap.ok, false);
    assert.equal(gap.firstBad, 4);
    await km3.close();
  } finally {
    t.cleanup();
  }
});

test('memory audit chain detects an edited entry', async () => {
  const km = new MemoryKeyManager();
  for (let i = 0; i < 3; i++) (await km.createKey(admin)).key.wipe();
  assert.equal((await km.verifyAudit(admin)).ok, true);
  km.rawAuditForTesting()[1]!.objectId = 'someone-else';
  const v = verifyAuditChain(km.rawAuditForTesting());
  assert.deepEqual([v.ok, v.firstBad], [false, 2]);
});

test('two processes creating keys in one keystore at once: all keys, a consistent audit chain', async () => {
  const t = tempDir();
  try {
    const db = join(t.dir, 'ks.db');
    await (await LocalKeyManager.init(db)).close();
    const worker = fileURLToPath(new URL('./keystore-worker.js', import.meta.url));
    const perProcess = 25;
    const runWorker = (tag: string) =>
      new Promise<string[]>((resolve, reject) => {
        const child = spawn(process.execPath, [worker, db, String(perProcess), tag], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (d) => (out += d));
        child.stderr.on('data', (d) => (err += d));
        child.on('exit', (code) => (code === 0 ? resolve(out.trim().split('\n')) : reject(new Error(`worker ${tag} exit ${code}: ${err}`))));
      });
    const [a, b] = await Promise.all([runWorker('A'), runWorker('B')]);
    assert.equal(a.length, perProcess);
    assert.equal(b.length, perProcess);
    const km = await LocalKeyManager.open(db);
    const listed = await km.list(admin);
    assert.equal(listed.length, 2 * perProcess);
    assert.deepEqual(new Set(listed.map((m) => m.id)), new Set([...a, ...b]));
    assert.equal(listed.filter((m) => m.name?.startsWith('A-')).length, perProcess);
    const v = await km.verifyAudit(admin);
    assert.equal(v.ok, true, v.reason);
    // init + 2*N creates (+ 1 list audited above)
    assert.equal(v.entries, 2 * perProcess + 1);
    for (const id of [...a, ...b].slice(0, 5)) (await km.get(admin, id)).secret.wipe();
    await km.close();
  } finally {
    t.cleanup();
  }
});
