/**
 * `brickcrypt key ...` end to end through the real CLI, each test in its own
 * BRICKCRYPT_HOME.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import Database from 'better-sqlite3';
import { Command } from 'commander';
import { register as registerKey } from '../../src/cli/commands/key.js';
import { cliPath, needTools, run, runCli, runStatus, tempDir, whichTool } from '../helpers/tools.js';
import { TEST_CERT_DER } from './contract-suite.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

function home() {
  const t = tempDir();
  const env = { BRICKCRYPT_HOME: t.dir, BRICKCRYPT_PROFILE: '', BRICKCRYPT_KEY_MANAGER: '' };
  const cli = (args: string[], input?: string | Uint8Array) => runCli(args, { env, ...(input !== undefined ? { input } : {}) });
  const ok = (args: string[]) => {
    const r = cli(args);
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  };
  const profile = (name: string, roles: string[], project = 'p1') => {
    const f = join(t.dir, `${name}.json`);
    writeFileSync(f, JSON.stringify({ user: name, project, roles }));
    return f;
  };
  return { dir: t.dir, cleanup: t.cleanup, cli, ok, profile };
}

test('key init, create (only the id on stdout), list, get --out with 0600 and --hex', () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    assert.equal(statSync(join(h.dir, 'keystore.kek')).mode & 0o777, 0o600);
    assert.equal(h.cli(['key', 'init']).status, 5, 'second init: exists');
    const out = h.ok(['key', 'create', '--name', 'vol-1']);
    assert.match(out, /^[0-9a-f-]{36}\n$/);
    const id = out.trim();
    assert.match(id, UUID);
    const list = JSON.parse(h.ok(['key', 'list', '--json']));
    assert.deepEqual(list.map((m: { id: string; name: string; bitLength: number }) => [m.id, m.name, m.bitLength]), [[id, 'vol-1', 256]]);
    assert.match(h.ok(['key', 'list']), new RegExp(`${id}\\s+symmetric\\s+aes\\s+256\\s+vol-1`));
    assert.deepEqual(JSON.parse(h.ok(['key', 'list', '--json', '--type', 'passphrase'])), []);
    const f = join(h.dir, 'vol.key');
    h.ok(['key', 'get', id, '--out', f]);
    assert.equal(statSync(f).mode & 0o777, 0o600);
    const bytes = readFileSync(f);
    assert.equal(bytes.length, 32);
    h.ok(['key', 'get', id, '--out', join(h.dir, 'vol.hex'), '--hex']);
    assert.equal(readFileSync(join(h.dir, 'vol.hex'), 'latin1'), bytes.toString('hex'));
    assert.equal(h.cli(['key', 'get', id, '--out', f]).status, 5, 'no silent overwrite');
    assert.equal(h.cli(['key', 'get', id]).status, 1, '--out is required');
    // stdout is a pipe here, so --out - is allowed.
    const piped = spawnSync(process.execPath, [cliPath, 'key', 'get', id, '--out', '-'], { env: { ...process.env, BRICKCRYPT_HOME: h.dir, BRICKCRYPT_PROFILE: '' } });
    assert.deepEqual(piped.stdout, bytes);
    const meta = JSON.parse(h.ok(['key', 'get', id, '--metadata-only']));
    assert.equal(meta.id, id);
    assert.equal(meta.secret, undefined);
    // create --out hands the new key over once.
    const id2 = h.ok(['key', 'create', '--bits', '512', '--out', join(h.dir, 'new.key')]).trim();
    h.ok(['key', 'get', id2, '--out', join(h.dir, 'new2.key')]);
    assert.deepEqual(readFileSync(join(h.dir, 'new.key')), readFileSync(join(h.dir, 'new2.key')));
    assert.equal(readFileSync(join(h.dir, 'new.key')).length, 64);
    // An --out that cannot be written is refused before any key is created.
    assert.equal(h.cli(['key', 'create', '--out', join(h.dir, 'new.key')]).status, 5);
    assert.equal(JSON.parse(h.ok(['key', 'list', '--json'])).length, 2);
  } finally {
    h.cleanup();
  }
});

test('key get refuses to write key bytes to a terminal', { skip: whichTool('script') ? false : 'script(1) not installed' }, () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    const id = h.ok(['key', 'create']).trim();
    const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(cliPath)} key get ${id} --out -; echo "rc=$?"`;
    const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, BRICKCRYPT_HOME: h.dir, BRICKCRYPT_PROFILE: '' }, encoding: 'utf8' });
    assert.match(r.stdout, /Refusing to write key bytes to a terminal/);
    assert.match(r.stdout, /rc=1/);
  } finally {
    h.cleanup();
  }
});

test('key store of passphrase, PEM certificate and PEM private key; clone; delete with consumers', () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    writeFileSync(join(h.dir, 'pw'), 'pass phrase\n');
    const pid = h.ok(['key', 'store', '--file', join(h.dir, 'pw'), '--type', 'passphrase', '--name', 'pw']).trim();
    h.ok(['key', 'get', pid, '--out', join(h.dir, 'pw.out')]);
    assert.equal(readFileSync(join(h.dir, 'pw.out'), 'utf8'), 'pass phrase\n', 'every byte kept');
    const pem = new X509Certificate(TEST_CERT_DER).toString();
    writeFileSync(join(h.dir, 'cert.pem'), pem);
    const cid = h.ok(['key', 'store', '--file', join(h.dir, 'cert.pem'), '--type', 'certificate']).trim();
    h.ok(['key', 'get', cid, '--out', join(h.dir, 'cert.der')]);
    assert.deepEqual(readFileSync(join(h.dir, 'cert.der')), TEST_CERT_DER, 'PEM stored as DER');
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' });
    writeFileSync(join(h.dir, 'k.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const kid = h.ok(['key', 'store', '--file', join(h.dir, 'k.pem'), '--type', 'private']).trim();
    const km = JSON.parse(h.ok(['key', 'get', kid, '--metadata-only']));
    assert.deepEqual([km.type, km.algorithm, km.bitLength], ['private', 'ec', 384]);
    writeFileSync(join(h.dir, 'junk'), 'junk');
    const bad = h.cli(['key', 'store', '--file', join(h.dir, 'junk'), '--type', 'certificate']);
    assert.equal(bad.status, 6);
    assert.match(bad.stderr, /INVALID_OBJECT/);
    const pair = h.ok(['key', 'create-pair', '--algorithm', 'ec', '--bits', '256']);
    assert.match(pair, /^private [0-9a-f-]{36}\npublic [0-9a-f-]{36}\n$/);

    const id = h.ok(['key', 'create']).trim();
    const copy = h.ok(['key', 'clone', id, '--name', 'backup']).trim();
    assert.match(copy, UUID);
    assert.notEqual(copy, id);
    h.ok(['key', 'get', id, '--out', join(h.dir, 'a')]);
    h.ok(['key', 'get', copy, '--out', join(h.dir, 'b')]);
    assert.deepEqual(readFileSync(join(h.dir, 'a')), readFileSync(join(h.dir, 'b')));
    h.ok(['key', 'consumer', id, '--add', 'volume/volume/vol-9']);
    const refused = h.cli(['key', 'delete', id]);
    assert.equal(refused.status, 5);
    assert.match(refused.stderr, /IN_USE/);
    h.ok(['key', 'delete', id, '--force']);
    const gone = h.cli(['key', 'get', id, '--out', join(h.dir, 'c')]);
    assert.equal(gone.status, 6);
    assert.match(gone.stderr, /KEY_NOT_FOUND/);
    assert.equal(existsSync(join(h.dir, 'c')), false, 'no file left behind on failure');
  } finally {
    h.cleanup();
  }
});

test('least privilege through profiles: creator cannot get, reader needs a grant; audit shows both', () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    const cinder = h.profile('cinder', ['creator']);
    const nova = h.profile('nova', ['reader']);
    const admin = h.profile('ops', ['admin']);
    const id = h.ok(['key', 'create', '--profile', cinder]).trim();
    const denied = h.cli(['key', 'get', id, '--out', join(h.dir, 'x'), '--profile', cinder]);
    assert.equal(denied.status, 2);
    assert.match(denied.stderr, /FORBIDDEN/);
    assert.equal(existsSync(join(h.dir, 'x')), false);
    const r1 = h.cli(['key', 'get', id, '--out', join(h.dir, 'x'), '--profile', nova]);
    assert.equal(r1.status, 2);
    h.ok(['key', 'acl', id, '--grant-read', 'nova', '--profile', cinder]);
    h.ok(['key', 'get', id, '--out', join(h.dir, 'n.key'), '--profile', nova]);
    assert.equal(readFileSync(join(h.dir, 'n.key')).length, 32);
    h.ok(['key', 'acl', id, '--revoke-read', 'nova', '--profile', admin]);
    assert.equal(h.cli(['key', 'get', id, '--out', join(h.dir, 'y'), '--profile', nova]).status, 2);
    // Same via environment and explicit flags; another project sees nothing.
    const envRun = runCli(['key', 'get', id, '--out', join(h.dir, 'z')], { env: { BRICKCRYPT_HOME: h.dir, BRICKCRYPT_PROFILE: cinder } });
    assert.equal(envRun.status, 2);
    const other = h.cli(['key', 'get', id, '--metadata-only', '--user', 'eve', '--project', 'p2', '--roles', 'admin']);
    assert.equal(other.status, 6);
    assert.match(other.stderr, /KEY_NOT_FOUND/);
    assert.equal(h.cli(['key', 'audit', '--profile', cinder]).status, 2, 'audit needs admin');
    const log = JSON.parse(h.ok(['key', 'audit', '--json', '--profile', admin])) as Array<{ user: string; operation: string; outcome: string; objectId?: string }>;
    const summary = log.filter((e) => e.objectId === id).map((e) => `${e.user}:${e.operation}:${e.outcome}`);
    assert.deepEqual(summary, [
      'cinder:createKey:allowed',
      'cinder:get:denied',
      'nova:get:denied',
      'cinder:grantRead:allowed',
      'nova:get:allowed',
      'ops:revokeRead:allowed',
      'nova:get:denied',
      'cinder:get:denied',
    ]);
    assert.match(h.ok(['key', 'audit', '--verify', '--profile', admin]), /^Audit chain OK: \d+ entries, head [0-9a-f]{64}\n$/);
    const all = JSON.parse(h.ok(['key', 'audit', '--json', '--all', '--profile', admin])) as Array<{ project: string }>;
    assert.ok(all.some((e) => e.project === 'p2'));
  } finally {
    h.cleanup();
  }
});

test('key audit --verify exits 7 after a row is edited', () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    h.ok(['key', 'create']);
    h.ok(['key', 'create']);
    const db = new Database(join(h.dir, 'keystore.db'));
    db.exec('DROP TRIGGER audit_no_update');
    db.prepare("UPDATE audit SET time = '2000-01-01T00:00:00.000Z' WHERE seq = 1").run();
    db.close();
    const r = h.cli(['key', 'audit', '--verify']);
    assert.equal(r.status, 7);
    assert.match(r.stderr, /INTEGRITY.*entry 1/);
  } finally {
    h.cleanup();
  }
});

test('key rotate-kek and passphrase-protected keystores', () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    const id = h.ok(['key', 'create']).trim();
    h.ok(['key', 'get', id, '--out', join(h.dir, 'before')]);
    const newKek = join(h.dir, 'new.kek');
    assert.match(h.ok(['key', 'rotate-kek', '--new-kek-file', newKek]), /KEK rotated; now file /);
    assert.equal(statSync(newKek).mode & 0o777, 0o600);
    h.ok(['key', 'get', id, '--out', join(h.dir, 'after')]);
    assert.deepEqual(readFileSync(join(h.dir, 'before')), readFileSync(join(h.dir, 'after')));
    const stale = h.cli(['key', 'list', '--kek-file', join(h.dir, 'keystore.kek')]);
    assert.equal(stale.status, 2);
    assert.match(stale.stderr, /WRONG_PASSPHRASE/);

    const ks = join(h.dir, 'pp.db');
    writeFileSync(join(h.dir, 'pp'), 'kek passphrase');
    writeFileSync(join(h.dir, 'wrong'), 'kek passphrasE');
    const uri = `local:${ks}`;
    h.ok(['key', 'init', '--key-manager', uri, '--kek-passphrase-file', join(h.dir, 'pp'), '--argon2-memory', '8192', '--argon2-time', '1', '--argon2-parallel', '1']);
    assert.equal(existsSync(join(h.dir, 'pp.kek')), false, 'no key file for a passphrase keystore');
    assert.equal(h.cli(['key', 'create', '--key-manager', uri]).status, 1, 'passphrase required');
    assert.equal(h.cli(['key', 'create', '--key-manager', uri, '--kek-passphrase-file', join(h.dir, 'wrong')]).status, 2);
    const pid = h.ok(['key', 'create', '--key-manager', uri, '--kek-passphrase-file', join(h.dir, 'pp')]).trim();
    assert.match(pid, UUID);
  } finally {
    h.cleanup();
  }
});

test('key manager URIs: memory works, unknown schemes and missing keystores are clear errors', () => {
  const h = home();
  try {
    assert.match(h.ok(['key', 'create', '--key-manager', 'memory:']).trim(), UUID);
    const bad = h.cli(['key', 'list', '--key-manager', 'vault://x']);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /INVALID_ARGUMENT/);
    const missing = h.cli(['key', 'list']);
    assert.equal(missing.status, 4);
    assert.match(missing.stderr, /key init/);
  } finally {
    h.cleanup();
  }
});

test('every key subcommand has complete --help', () => {
  // In-process: the same commander definitions the CLI uses, without a process per subcommand.
  const program = new Command('brickcrypt').exitOverride();
  registerKey(program);
  const key = program.commands.find((c) => c.name() === 'key')!;
  const subs = ['init', 'create', 'create-pair', 'store', 'get', 'clone', 'delete', 'list', 'acl', 'consumer', 'audit', 'rotate-kek'];
  assert.deepEqual(key.commands.map((c) => c.name()).sort(), [...subs].sort());
  for (const sub of key.commands) {
    let help = '';
    sub.configureOutput({ writeOut: (t) => (help += t), writeErr: (t) => (help += t) });
    sub.outputHelp();
    for (const common of ['--key-manager', '--user', '--project', '--roles', '--profile', 'Exit codes']) assert.ok(help.includes(common), `${sub.name()} --help shows ${common}`);
    assert.match(help, /Examples?:/, `${sub.name()} --help has examples`);
    assert.ok(sub.description().length > 20, `${sub.name()} has a description`);
  }
  // And once through the real binary.
  const h = home();
  try {
    const top = h.ok(['key', '--help']);
    for (const s of subs) assert.match(top, new RegExp(`\\b${s}\\b`), `key --help lists ${s}`);
    assert.match(h.ok(['key', 'get', '--help']), /--out <file>/);
  } finally {
    h.cleanup();
  }
});

test('interop: a key from `key create --hex` formats a LUKS2 volume that cryptsetup opens with `key get --hex`', { skip: needTools('cryptsetup') }, () => {
  const h = home();
  try {
    h.ok(['key', 'init']);
    const hexFile = join(h.dir, 'new.hex');
    const id = h.ok(['key', 'create', '--out', hexFile, '--hex']).trim();
    const img = join(h.dir, 'vol.img');
    writeFileSync(img, Buffer.alloc(32 * 1024 * 1024));
    run('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--key-file', hexFile, img]);
    const got = join(h.dir, 'got.hex');
    h.ok(['key', 'get', id, '--out', got, '--hex']);
    assert.equal(readFileSync(got, 'latin1'), readFileSync(hexFile, 'latin1'));
    const ok = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', got, img]);
    assert.equal(ok.status, 0, ok.stderr);
    // The raw key bytes are not the passphrase (os-brick convention is the hex form).
    h.ok(['key', 'get', id, '--out', join(h.dir, 'raw.bin')]);
    const raw = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', join(h.dir, 'raw.bin'), img]);
    assert.equal(raw.status, 2);
  } finally {
    h.cleanup();
  }
});
