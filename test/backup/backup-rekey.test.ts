/**
 * `backup restore --rekey-on-restore`: a backed-up LUKS volume restored into a volume under a new
 * volume key, re-encrypted in the same pass. The restored volume holds the same plaintext, opens
 * with the new key (ours and cryptsetup), not with the old one, and has another volume key and UUID.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;
const FAST_KDF = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];

function setup() {
  const tmp = tempDir('brickcrypt-backup-rekey-');
  const env = { BRICKCRYPT_HOME: join(tmp.dir, 'home'), BRICKCRYPT_BACKUP_REPO: `file:${join(tmp.dir, 'repo')}` };
  const cli = (args: string[]) => runCli(args, { env, timeout: 120_000 });
  const ok = (args: string[]) => {
    const r = cli(args);
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    return r.stdout;
  };
  ok(['key', 'init']);
  ok(['backup', 'init', '--chunk-size', '256K']);
  return { tmp, cli, ok };
}

/** A LUKS volume of `type` holding `plain` (random data with a zero gap), under `keyFile`. */
function luksVolume(ok: (a: string[]) => string, dir: string, type: 'luks1' | 'luks2', keyFile: string): { vol: string; plain: string } {
  const plain = join(dir, `plain-${type}.img`);
  const data = Buffer.concat([randomBytes(3 * MIB + 512), Buffer.alloc(2 * MIB), randomBytes(MIB - 512)]);
  writeFileSync(plain, data);
  const vol = join(dir, `vol.${type}`);
  ok(['convert', plain, vol, '--dst-format', type, '--dst-key-file', keyFile, ...FAST_KDF]);
  return { vol, plain };
}

const volumeKeyOf = (vol: string, keyFile: string): string => {
  const dump = run('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file', keyFile, vol]);
  const m = /(?:MK|Volume key) dump:\s*([\s\S]*?)(?:\n\S|$)/i.exec(dump);
  assert.ok(m, dump);
  return m[1]!.replace(/\s+/g, '');
};

for (const type of ['luks2', 'luks1'] as const) {
  test(`${type}: rekey on restore with a new managed key; old passphrase no longer opens it, cryptsetup opens it with the new key`, { skip: needTools('cryptsetup') }, () => {
    const { tmp, ok, cli } = setup();
    try {
      const oldPass = join(tmp.dir, 'old.pass');
      writeFileSync(oldPass, 'the old passphrase');
      const { vol, plain } = luksVolume(ok, tmp.dir, type, oldPass);
      const id = ok(['backup', 'create', vol]).trim();
      const target = join(tmp.dir, `rekeyed.${type}`);
      const r = cli(['backup', 'restore', id, target, '--rekey-on-restore', '--src-key-file', oldPass, ...FAST_KDF]);
      assert.equal(r.status, 0, r.stderr);
      const newKeyId = r.stdout.trim();
      assert.match(newKeyId, /^[0-9a-f-]{36}$/);
      // Same plaintext, opened with the new managed key.
      assert.match(ok(['verify', plain, target, '--dst-key-id', newKeyId]), /equal/);
      // The old passphrase opens nothing in it, neither here nor in cryptsetup.
      assert.equal(cli(['verify', plain, target, '--dst-key-file', oldPass]).status, 2);
      assert.notEqual(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', oldPass, target]).status, 0);
      const newPass = join(tmp.dir, 'new.pass');
      ok(['key', 'get', newKeyId, '--hex', '--out', newPass]);
      const opened = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', newPass, target]);
      assert.equal(opened.status, 0, opened.stderr);
      // A new volume key and UUID; the same cipher and LUKS version.
      assert.notEqual(volumeKeyOf(target, newPass), volumeKeyOf(vol, oldPass));
      assert.notEqual(run('cryptsetup', ['luksUUID', target]).trim(), run('cryptsetup', ['luksUUID', vol]).trim());
      const dump = run('cryptsetup', ['luksDump', target]);
      assert.match(dump, type === 'luks2' ? /Version:\s*2/ : /Version:\s*1/);
      assert.match(dump, /aes/);
      // The plain restore of the same backup still gives back the old container.
      const same = join(tmp.dir, 'same.img');
      ok(['backup', 'restore', id, same]);
      assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', oldPass, same]).status, 0);
    } finally {
      tmp.cleanup();
    }
  });
}

test('rekey on restore with --dst-key-file; wrong old passphrase, damaged chunk and a raw backup are refused with no target and no orphan key', { skip: needTools('cryptsetup') }, () => {
  const { tmp, ok, cli } = setup();
  try {
    const oldPass = join(tmp.dir, 'old.pass');
    writeFileSync(oldPass, 'old');
    const newPass = join(tmp.dir, 'new.pass');
    writeFileSync(newPass, 'new passphrase');
    const { vol, plain } = luksVolume(ok, tmp.dir, 'luks2', oldPass);
    const id = ok(['backup', 'create', vol]).trim();
    const target = join(tmp.dir, 'rekeyed');
    const json = ok(['backup', 'restore', id, target, '--rekey-on-restore', '--src-key-file', oldPass, '--dst-key-file', newPass, '--json', ...FAST_KDF]);
    const done = json.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>).find((e) => e.event === 'done')!;
    assert.equal(done.format, 'luks2');
    assert.equal(done.createdKeyId, undefined);
    assert.notEqual(done.uuid, done.oldUuid);
    assert.match(ok(['verify', plain, target, '--dst-key-file', newPass]), /equal/);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', newPass, target]).status, 0);

    const keysBefore = (JSON.parse(ok(['key', 'list', '--json'])) as unknown[]).length;
    const wrong = join(tmp.dir, 'wrong.pass');
    writeFileSync(wrong, 'not it');
    const t2 = join(tmp.dir, 'rekeyed2');
    const bad = cli(['backup', 'restore', id, t2, '--rekey-on-restore', '--src-key-file', wrong, ...FAST_KDF]);
    assert.equal(bad.status, 2, bad.stderr);
    assert.equal(existsSync(t2), false);
    assert.equal((JSON.parse(ok(['key', 'list', '--json'])) as unknown[]).length, keysBefore, 'no orphan key');
    assert.deepEqual(readdirSync(tmp.dir).filter((n) => n.includes('partial')), []);

    // No key for the old volume, or the option on a raw backup: argument errors.
    assert.equal(cli(['backup', 'restore', id, t2, '--rekey-on-restore']).status, 1);
    const raw = ok(['backup', 'create', plain]).trim();
    assert.equal(cli(['backup', 'restore', raw, t2, '--rekey-on-restore', '--src-key-file', oldPass]).status, 1);
    assert.equal(cli(['backup', 'restore', raw, t2, '--src-key-file', oldPass]).status, 1);
    assert.equal(existsSync(t2), false);

    // A flipped byte in a chunk: integrity error, no target, no orphan key.
    const chunkDir = join(tmp.dir, 'repo', 'chunks');
    const files = readdirSync(chunkDir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
    for (const f of files) {
      const b = readFileSync(f);
      b[b.length - 20] ^= 1;
      writeFileSync(f, b);
    }
    const damaged = cli(['backup', 'restore', id, t2, '--rekey-on-restore', '--src-key-file', oldPass, ...FAST_KDF]);
    assert.equal(damaged.status, 7, damaged.stderr);
    assert.equal(existsSync(t2), false);
    assert.equal((JSON.parse(ok(['key', 'list', '--json'])) as unknown[]).length, keysBefore, 'no orphan key');
  } finally {
    tmp.cleanup();
  }
});
