/**
 * Volume commands with keys from the key manager: the least-privilege flow end to end.
 * A `creator` makes a volume with a new key it can never read again; a `reader` granted
 * the key opens it; cryptsetup opens it with the os-brick hex passphrase.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, runCli, runStatus, tempDir } from '../helpers/tools.js';

const FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];

function setup() {
  const tmp = tempDir();
  const env = { BRICKCRYPT_HOME: join(tmp.dir, 'home') };
  const ok = (args: string[], input?: string) => {
    const r = runCli(args, { env, ...(input !== undefined ? { input } : {}) });
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  };
  ok(['key', 'init']);
  return { tmp, env, ok };
}

test('format --create-key as creator: the creator cannot open it, a granted reader can', () => {
  const { tmp, env, ok } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const id = ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', '--roles', 'creator', ...FAST]).trim();
    assert.match(id, /^[0-9a-f-]{36}$/);

    const denied = runCli(['test-key', vol, '--key-id', id, '--roles', 'creator'], { env });
    assert.equal(denied.status, 2, denied.stderr);
    assert.match(denied.stderr, /FORBIDDEN/);

    const ungranted = runCli(['test-key', vol, '--key-id', id, '--user', 'compute1', '--roles', 'reader'], { env });
    assert.notEqual(ungranted.status, 0);

    ok(['key', 'acl', id, '--grant-read', 'compute1', '--roles', 'creator']);
    assert.match(ok(['test-key', vol, '--key-id', id, '--user', 'compute1', '--roles', 'reader']), /Key slot 0 unlocked/);

    const audit = ok(['key', 'audit']);
    assert.match(audit, /\(creator\) get .* denied/);
    assert.match(audit, /compute1.*\(reader\) get .* allowed/);
  } finally {
    tmp.cleanup();
  }
});

test('convert --create-key, then verify with --dst-key-id; a failed conversion leaves no key behind', () => {
  const { tmp, env, ok } = setup();
  try {
    const raw = join(tmp.dir, 'disk.raw');
    writeFileSync(raw, randomBytes(3 * 1024 * 1024));
    const vol = join(tmp.dir, 'vol.luks');
    const id = ok(['convert', raw, vol, '--dst-format', 'luks1', '--create-key', '--roles', 'creator', '--pbkdf-force-iterations', '1000']).trim();
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.match(ok(['verify', raw, vol, '--dst-key-id', id]), /Images are equal/);

    const before = ok(['key', 'list', '--json']);
    const tooSmall = runCli(['convert', raw, join(tmp.dir, 'small.luks'), '--dst-format', 'luks2', '--create-key', '--size', '1M', ...FAST], { env });
    assert.notEqual(tooSmall.status, 0);
    assert.equal(existsSync(join(tmp.dir, 'small.luks')), false);
    assert.deepEqual(JSON.parse(ok(['key', 'list', '--json'])).length, JSON.parse(before).length);
  } finally {
    tmp.cleanup();
  }
});

test('a managed key opens a cryptsetup volume with the os-brick hex passphrase, both ways', { skip: needTools('cryptsetup') }, () => {
  const { tmp, env, ok } = setup();
  try {
    // brickcrypt formats with a managed key; cryptsetup opens it with hex(key bytes).
    const vol = join(tmp.dir, 'ours.img');
    const id = ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]).trim();
    const keyFile = join(tmp.dir, 'key.bin');
    ok(['key', 'get', id, '--out', keyFile]);
    const hex = readFileSync(keyFile).toString('hex');
    const cs = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file=-', vol], { input: hex });
    assert.equal(cs.status, 0, cs.stderr);

    // cryptsetup formats with hex(key) of a key stored here; brickcrypt opens it by id.
    const theirs = join(tmp.dir, 'theirs.img');
    writeFileSync(theirs, Buffer.alloc(32 * 1024 * 1024));
    const key = randomBytes(32);
    key[0] = 0; // a leading zero byte must survive as "00"
    const stored = join(tmp.dir, 'stored.bin');
    writeFileSync(stored, key);
    const id2 = ok(['key', 'store', '--file', stored, '--type', 'symmetric']).trim();
    const fmt = runStatus('cryptsetup', ['luksFormat', '--batch-mode', '--type', 'luks1', ...FAST.slice(2), '--key-file=-', theirs], {
      input: key.toString('hex'),
    });
    assert.equal(fmt.status, 0, fmt.stderr);
    assert.match(ok(['test-key', theirs, '--key-id', id2]), /unlocked/);
    const wrong = runCli(['test-key', theirs, '--key-id', id], { env });
    assert.equal(wrong.status, 2);
  } finally {
    tmp.cleanup();
  }
});
