/**
 * Volumes that know their key, on the command line: `format/convert --create-key` write a
 * brickcrypt-key-manager token; test-key, add-key, verify, convert and attach find the key
 * with no key option; explicit options win; `token add|remove|list`; typed failures; and
 * cryptsetup reads, ignores and writes such tokens.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { cliPath, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];

// Runs the CLI under a new pseudo-terminal (Python's pty module), answering a prompt `expect`
// with `send` once if it appears; prints {"exit": N, "output": "..."}.
const PTY_RUN = `
import os, pty, sys, json, select, time
expect, send = sys.argv[1].encode(), sys.argv[2].encode()
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[3], sys.argv[3:])
buf = b''
answered = False
deadline = time.time() + 120
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 1)
    if not r:
        continue
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    buf += data
    if not answered and expect in buf:
        os.write(fd, send)
        answered = True
_, status = os.waitpid(pid, 0)
print(json.dumps({'exit': os.waitstatus_to_exitcode(status), 'output': buf.decode('utf8', 'replace')}))
`;

function underPty(args: string[], env: NodeJS.ProcessEnv, expect: string, send: string): { exit: number; output: string } {
  const python = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const r = spawnSync(python, ['-c', PTY_RUN, expect, send, process.execPath, cliPath, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 300_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { exit: number; output: string };
}

function setup() {
  const tmp = tempDir();
  const home = join(tmp.dir, 'home');
  const env = { BRICKCRYPT_HOME: home, BRICKCRYPT_KEY_MANAGER: '' };
  const cli = (args: string[], input?: string) => runCli(args, { env, ...(input !== undefined ? { input } : {}) });
  const ok = (args: string[], input?: string) => {
    const r = cli(args, input);
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  };
  ok(['key', 'init']);
  const tokens = (vol: string) => JSON.parse(ok(['token', 'list', vol, '--json'])) as Array<Record<string, unknown>>;
  return { tmp, home, env, cli, ok, tokens };
}

test('format --create-key writes the token; test-key, add-key and attach find the key with no --key-id', () => {
  const { tmp, home, cli, ok, tokens } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const r = cli(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]);
    assert.equal(r.status, 0, r.stderr);
    const id = r.stdout.trim();
    assert.match(id, /^[0-9a-f-]{36}$/, 'the key id stays the only line on stdout');
    assert.match(r.stderr, /Token 0 records key/);
    assert.deepEqual(tokens(vol), [{ id: 0, type: 'brickcrypt-key-manager', keyslots: ['0'], keyId: id, keyManager: `local:${home}/keystore.db` }]);
    assert.match(ok(['token', 'list', vol]), /0: brickcrypt-key-manager\n\tKeyslot: +0\n\tKey id: +[0-9a-f-]+\n\tKey manager: local:/);

    assert.match(ok(['test-key', vol]), /Key slot 0 unlocked/);
    const pass = join(tmp.dir, 'pass');
    writeFileSync(pass, 'second');
    assert.match(ok(['add-key', vol, '--new-key-file', pass, ...FAST]), /Key slot 1 created/);
    assert.match(ok(['test-key', vol, '--key-file', pass]), /Key slot 1 unlocked/);

    // attach unlocks with the token's key before it serves.
    const sock = join(tmp.dir, 'vol.sock');
    const pid = join(tmp.dir, 'vol.pid');
    const served = cli(['attach', vol, '--socket', sock, '--daemon', '--pid-file', pid]);
    try {
      assert.equal(served.status, 0, served.stderr);
      assert.equal(served.stdout.trim(), `nbd+unix:///?socket=${sock}`);
    } finally {
      if (existsSync(pid)) ok(['detach', '--pid-file', pid]);
    }
  } finally {
    tmp.cleanup();
  }
});

test('on a terminal the token is consulted before the prompt; without a token the prompt is asked', () => {
  const { tmp, env, ok } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]);
    const pass = join(tmp.dir, 'pass');
    writeFileSync(pass, 'typed secret');
    ok(['add-key', vol, '--new-key-file', pass, ...FAST]);
    const viaToken = underPty(['test-key', vol], env, 'Enter passphrase', 'wrong\r');
    assert.equal(viaToken.exit, 0, viaToken.output);
    assert.doesNotMatch(viaToken.output, /Enter passphrase/);
    assert.match(viaToken.output, /Key slot 0 unlocked/);
    ok(['token', 'remove', vol, '--token-id', '0']);
    const typed = underPty(['test-key', vol], env, 'Enter passphrase for', 'typed secret\r');
    assert.equal(typed.exit, 0, typed.output);
    assert.match(typed.output, /Enter passphrase for [\s\S]*Key slot 1 unlocked/);
  } finally {
    tmp.cleanup();
  }
});

test('resize and reencrypt find the key through the token; reencrypt moves the token to the new keyslot', () => {
  const { tmp, ok, tokens } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const id = ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]).trim();
    ok(['resize', vol, '--size', '8M']);
    assert.equal(statSync(vol).size, 16 * 1024 * 1024 + 8 * 1024 * 1024, 'grown: the new space needed the key');
    ok(['reencrypt', vol, ...FAST]);
    const [token] = tokens(vol);
    assert.equal(token!.keyId, id);
    assert.deepEqual(token!.keyslots, ['1']);
    assert.equal(token!.problem, undefined);
    assert.match(ok(['test-key', vol]), /Key slot 1 unlocked/);
  } finally {
    tmp.cleanup();
  }
});

test('convert --create-key gives a LUKS2 target a token; verify and convert read sources through it', () => {
  const { tmp, cli, ok, tokens } = setup();
  try {
    const raw = join(tmp.dir, 'disk.raw');
    writeFileSync(raw, randomBytes(2 * 1024 * 1024));
    const vol = join(tmp.dir, 'vol.luks');
    const r = cli(['convert', raw, vol, '--dst-format', 'luks2', '--create-key', ...FAST]);
    assert.equal(r.status, 0, r.stderr);
    const id = r.stdout.trim();
    assert.equal(tokens(vol)[0]!.keyId, id);
    assert.match(ok(['verify', raw, vol]), /Images are equal/);
    const back = join(tmp.dir, 'back.raw');
    ok(['convert', vol, back, '--dst-format', 'raw']);
    assert.deepEqual(readFileSync(back), readFileSync(raw));

    // --no-token and LUKS1 targets: no token, and the source then needs its key again.
    const plainKey = join(tmp.dir, 'nt.luks');
    ok(['convert', raw, plainKey, '--dst-format', 'luks2', '--create-key', '--no-token', ...FAST]);
    assert.deepEqual(tokens(plainKey), []);
    const l1 = join(tmp.dir, 'l1.luks');
    const r1 = cli(['convert', raw, l1, '--dst-format', 'luks1', '--create-key', '--pbkdf-force-iterations', '1000']);
    assert.equal(r1.status, 0, r1.stderr);
    assert.match(r1.stderr, /LUKS1 headers have no tokens/);
    const needsKey = cli(['verify', raw, l1]);
    assert.equal(needsKey.status, 1, needsKey.stderr);

    // A key-manager URI with credentials is refused before a key is made or a byte written.
    const keysBefore = ok(['key', 'list', '--json']);
    for (const args of [
      ['convert', raw, join(tmp.dir, 'c.luks'), '--dst-format', 'luks2', '--create-key', ...FAST],
      ['format', join(tmp.dir, 'c.luks'), '--type', 'luks2', '--size', '4M', '--create-key', ...FAST],
    ]) {
      const refused = cli([...args, '--key-manager', 'barbican+https://admin:pw@kms.invalid:9311']);
      assert.equal(refused.status, 1, refused.stderr);
      assert.match(refused.stderr, /user name or password/);
      assert.doesNotMatch(refused.stderr, /admin:pw/, 'the credentials are not echoed');
      assert.equal(existsSync(join(tmp.dir, 'c.luks')), false);
    }
    assert.equal(ok(['key', 'list', '--json']), keysBefore);
  } finally {
    tmp.cleanup();
  }
});

test('precedence: an explicit --key-id or --key-file wins, --key-manager overrides the token\'s key manager', () => {
  const { tmp, home, cli, ok } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const id = ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]).trim();
    const other = ok(['key', 'create']).trim();
    // An explicit key option is used as given, the token is not consulted.
    assert.equal(cli(['test-key', vol, '--key-id', other]).status, 2);
    const wrong = join(tmp.dir, 'wrong');
    writeFileSync(wrong, 'nope');
    assert.equal(cli(['test-key', vol, '--key-file', wrong]).status, 2);

    // The token's key manager beats $BRICKCRYPT_KEY_MANAGER (only --key-manager is an explicit choice).
    const viaEnv = runCli(['test-key', vol], { env: { BRICKCRYPT_HOME: home, BRICKCRYPT_KEY_MANAGER: `local:${tmp.dir}/elsewhere.db` } });
    assert.equal(viaEnv.status, 0, viaEnv.stderr);
    // A token whose key manager is somewhere else: --key-manager points at the right one.
    ok(['token', 'remove', vol, '--token-id', '0']);
    ok(['token', 'add', vol, '--key-id', id, '--key-slot', '0', '--no-verify', '--key-manager', `local:${tmp.dir}/moved/keystore.db`]);
    const lost = cli(['test-key', vol]);
    assert.notEqual(lost.status, 0);
    assert.match(ok(['test-key', vol, '--key-manager', `local:${home}/keystore.db`]), /Key slot 0 unlocked/);
    // --key-manager without --key-id and without a token is still a usage error.
    ok(['token', 'remove', vol, '--token-id', '0']);
    const usage = cli(['test-key', vol, '--key-manager', `local:${home}/keystore.db`]);
    assert.equal(usage.status, 1);
    assert.match(usage.stderr, /--key-manager needs --key-id ID/);
  } finally {
    tmp.cleanup();
  }
});

test('token add|remove|list and the typed failures', () => {
  const { tmp, cli, ok, tokens } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const id = ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', '--no-token', ...FAST]).trim();
    assert.equal(ok(['token', 'list', vol]), 'No tokens.\n');
    // No key source at all: the usual usage error, nothing prompts (stdin is not a terminal).
    const none = cli(['test-key', vol]);
    assert.equal(none.status, 1);
    assert.match(none.stderr, /--key-file \(or --key-id\) is required/);

    const header = readFileSync(vol).subarray(0, 32768);
    const other = ok(['key', 'create']).trim();
    const wrong = cli(['token', 'add', vol, '--key-id', other]);
    assert.equal(wrong.status, 2, wrong.stderr);
    const creds = cli(['token', 'add', vol, '--key-id', id, '--key-manager', 'barbican+https://admin:secret@kms:9311']);
    assert.equal(creds.status, 1);
    assert.match(creds.stderr, /user name or password/);
    assert.equal(cli(['token', 'add', vol, '--key-id', id, '--no-verify']).status, 1, '--no-verify needs --key-slot');
    assert.equal(cli(['token', 'remove', vol, '--token-id', '4']).status, 4);
    assert.deepEqual(readFileSync(vol).subarray(0, 32768), header, 'refusals write nothing');

    assert.match(ok(['token', 'add', vol, '--key-id', id, '--token-id', '2']), /Token 2 created: key .* opens keyslot 0/);
    assert.deepEqual(tokens(vol).map((t) => [t.id, t.keyId]), [[2, id]]);
    assert.equal(cli(['token', 'add', vol, '--key-id', id]).status, 5, 'the same token twice');
    assert.match(ok(['test-key', vol]), /Key slot 0 unlocked/);

    // The key is deleted from the key manager: the key manager's not-found error (exit 6).
    const vol2 = join(tmp.dir, 'vol2.img');
    const id2 = ok(['format', vol2, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]).trim();
    ok(['key', 'delete', id2]);
    const gone = cli(['test-key', vol2]);
    assert.equal(gone.status, 6, gone.stderr);
    assert.match(gone.stderr, /KEY_NOT_FOUND/);

    // The token's keyslot is wiped: the token stays, unusable, with a typed error.
    const pass = join(tmp.dir, 'pass');
    writeFileSync(pass, 'spare');
    ok(['add-key', vol, '--new-key-file', pass, ...FAST]);
    ok(['kill-slot', vol, '0']);
    const list = tokens(vol);
    assert.deepEqual(list[0]!.keyslots, []);
    assert.match(String(list[0]!.problem), /no keyslot/);
    const orphan = cli(['test-key', vol]);
    assert.equal(orphan.status, 4, orphan.stderr);
    assert.match(orphan.stderr, /KEYSLOT_NOT_FOUND/);
    assert.match(ok(['test-key', vol, '--key-file', pass]), /Key slot 0 unlocked|Key slot 1 unlocked/);
    ok(['token', 'remove', vol, '--token-id', '2']);

    // LUKS1 has no tokens.
    const l1 = join(tmp.dir, 'l1.img');
    const r1 = cli(['format', l1, '--type', 'luks1', '--size', '4M', '--create-key', '--pbkdf-force-iterations', '1000']);
    assert.equal(r1.status, 0, r1.stderr);
    assert.match(r1.stderr, /LUKS1 headers have no tokens/);
    assert.equal(cli(['token', 'add', l1, '--key-id', r1.stdout.trim()]).status, 1);
    assert.equal(ok(['token', 'list', l1]), 'No tokens.\n');
  } finally {
    tmp.cleanup();
  }
});

test('cryptsetup: luksDump lists the token, the hex passphrase still opens, imported tokens are read', { skip: needTools('cryptsetup') }, () => {
  const { tmp, cli, ok, tokens } = setup();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const id = ok(['format', vol, '--type', 'luks2', '--size', '4M', '--create-key', ...FAST]).trim();
    const dump = run('cryptsetup', ['luksDump', vol]);
    assert.match(dump, /Tokens:\n\s+0: brickcrypt-key-manager\n\s+Keyslot:\s+0\n/);
    const exported = JSON.parse(run('cryptsetup', ['token', 'export', '--token-id', '0', vol]));
    assert.deepEqual(Object.keys(exported).sort(), ['key_id', 'key_manager', 'keyslots', 'type']);
    assert.equal(exported.key_id, id);

    // cryptsetup ignores the token type it does not know and opens with the os-brick passphrase.
    const keyFile = join(tmp.dir, 'key.bin');
    ok(['key', 'get', id, '--out', keyFile]);
    const hex = readFileSync(keyFile).toString('hex');
    const open = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file=-', vol], { input: hex });
    assert.equal(open.status, 0, open.stderr);

    // A token written by cryptsetup token import is read by brickcrypt.
    ok(['token', 'remove', vol, '--token-id', '0']);
    const json = join(tmp.dir, 'token.json');
    writeFileSync(json, JSON.stringify({ type: 'brickcrypt-key-manager', keyslots: ['0'], key_id: id }));
    run('cryptsetup', ['token', 'import', '--json-file', json, '--token-id', '5', vol]);
    assert.deepEqual(tokens(vol), [{ id: 5, type: 'brickcrypt-key-manager', keyslots: ['0'], keyId: id }]);
    assert.match(ok(['test-key', vol]), /Key slot 0 unlocked/);

    // A malformed brickcrypt token imported by cryptsetup is refused cleanly; foreign types are ignored.
    writeFileSync(json, JSON.stringify({ type: 'brickcrypt-key-manager', keyslots: ['0'], key_id: id, key_manager: 'barbican+https://admin:pw@kms:9311' }));
    run('cryptsetup', ['token', 'import', '--json-file', json, '--token-id', '1', vol]);
    writeFileSync(json, JSON.stringify({ type: 'example-foreign', keyslots: ['0'], note: 'not ours' }));
    run('cryptsetup', ['token', 'import', '--json-file', json, '--token-id', '0', vol]);
    const bad = cli(['test-key', vol]);
    assert.equal(bad.status, 0, 'token 5 still works after the malformed token 1');
    assert.match(bad.stderr, /token 1 not used: .*MALFORMED|token 1 not used: Token 1 \(brickcrypt-key-manager\) is malformed/);
    run('cryptsetup', ['token', 'remove', '--token-id', '5', vol]);
    const only = cli(['test-key', vol]);
    assert.equal(only.status, 4, only.stderr);
    assert.match(only.stderr, /MALFORMED_TOKEN/);
    assert.deepEqual(tokens(vol).map((t) => t.type), ['example-foreign', 'brickcrypt-key-manager']);

    // Our token writes leave a header cryptsetup accepts (both copies, seqid bumped).
    ok(['token', 'remove', vol, '--token-id', '1']);
    ok(['token', 'add', vol, '--key-id', id]);
    assert.match(run('cryptsetup', ['luksDump', vol]), /0: example-foreign[\s\S]*1: brickcrypt-key-manager/);
    const seqid = /Epoch:\s+(\d+)/.exec(run('cryptsetup', ['luksDump', vol]));
    assert.ok(seqid && Number(seqid[1]) > 3, 'every write bumps the epoch');
    assert.equal(runStatus('cryptsetup', ['repair', '--batch-mode', vol]).status, 0);
  } finally {
    tmp.cleanup();
  }
});
