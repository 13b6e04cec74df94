/**
 * Passphrases typed at a real pseudo-terminal (Python's pty module drives the CLI): no echo,
 * a wrong passphrase asked again up to --tries, a new one asked twice, and without a terminal a
 * usage error instead of a prompt.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { cliPath, needTools, runCli, tempDir, whichTool } from '../helpers/tools.js';

const tmp = tempDir('brickcrypt-prompt-');
after(() => tmp.cleanup());

const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

// Runs argv under a new pseudo-terminal; for each [expect, send] waits for `expect` in the
// output, then types `send`. Prints {"exit": N, "output": "..."} as JSON.
const PTY_DRIVER = `
import os, pty, sys, json, select, time
steps = json.loads(sys.argv[1])
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
out = []
buf = b''
def read_more(deadline):
    global buf
    r, _, _ = select.select([fd], [], [], max(0, deadline - time.time()))
    if not r:
        return False
    try:
        data = os.read(fd, 4096)
    except OSError:
        return False
    if not data:
        return False
    buf += data
    return True
for expect, send in steps:
    deadline = time.time() + 120
    while expect.encode() not in buf:
        if not read_more(deadline):
            print(json.dumps({'exit': -1, 'output': (b''.join(out) + buf).decode('utf8', 'replace'), 'waiting': expect}))
            sys.exit(0)
    i = buf.index(expect.encode()) + len(expect)
    out.append(buf[:i]); buf = buf[i:]
    os.write(fd, send.encode())
deadline = time.time() + 120
while read_more(deadline):
    pass
out.append(buf)
_, status = os.waitpid(pid, 0)
print(json.dumps({'exit': os.waitstatus_to_exitcode(status), 'output': b''.join(out).decode('utf8', 'replace')}))
`;

function underPty(args: string[], steps: Array<[string, string]>): { exit: number; output: string; waiting?: string } {
  const r = spawnSync(PYTHON, ['-c', PTY_DRIVER, JSON.stringify(steps), process.execPath, cliPath, ...args], { encoding: 'utf8', timeout: 300_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { exit: number; output: string; waiting?: string };
}

const KDF = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
const GOOD = 'correct horse';
const vol = join(tmp.dir, 'vol.luks');

test('format asks twice: a mismatch is PASSPHRASE_MISMATCH (exit 2) and creates nothing; a match formats', () => {
  const bad = underPty(['format', vol, '--type', 'luks2', '--size', '4M', ...KDF], [
    ['Enter passphrase for', `${GOOD}\r`],
    ['Verify passphrase: ', 'something else\r'],
  ]);
  assert.equal(bad.exit, 2, bad.output);
  assert.match(bad.output, /error PASSPHRASE_MISMATCH: Passphrases do not match/);
  assert.equal(existsSync(vol), false, 'no volume after a mismatch');
  const ok = underPty(['format', vol, '--type', 'luks2', '--size', '4M', ...KDF], [
    ['Enter passphrase for', `${GOOD}\r`],
    ['Verify passphrase: ', `${GOOD}\r`],
  ]);
  assert.equal(ok.exit, 0, ok.output);
  assert.ok(!ok.output.includes(GOOD), 'the typed passphrase is not echoed');
  // The typed line without its newline is the passphrase: a key file with exactly those bytes opens it.
  const pass = join(tmp.dir, 'pass');
  writeFileSync(pass, GOOD);
  assert.equal(runCli(['test-key', vol, '--key-file', pass]).status, 0);
});

test('cryptsetup opens the volume with the typed passphrase', { skip: needTools('cryptsetup') }, () => {
  execFileSync(whichTool('cryptsetup')!, ['open', '--test-passphrase', '--key-file=-', vol], { input: GOOD });
});

test('a wrong passphrase is asked again; the right one then unlocks', () => {
  const r = underPty(['test-key', vol], [
    ['Enter passphrase for', 'wrong one\r'],
    ['No key available with this passphrase.', ''],
    ['Enter passphrase for', `${GOOD}\r`],
  ]);
  assert.equal(r.exit, 0, r.output);
  assert.match(r.output, /Key slot 0 unlocked/);
  assert.ok(!r.output.includes('wrong one') && !r.output.includes(GOOD), 'nothing typed is echoed');
});

test('tries exhausted (--tries 2, and the default 3): WRONG_PASSPHRASE, exit 2', () => {
  const r = underPty(['test-key', vol, '--tries', '2'], [
    ['Enter passphrase for', 'nope 1\r'],
    ['Enter passphrase for', 'nope 2\r'],
  ]);
  assert.equal(r.exit, 2, r.output);
  assert.match(r.output, /error WRONG_PASSPHRASE:/);
  assert.equal(r.output.match(/Enter passphrase for/g)?.length, 2, 'asked exactly twice');
  // cryptsetup's default is 3 tries.
  const d = underPty(['test-key', vol], [
    ['Enter passphrase for', 'nope 1\r'],
    ['Enter passphrase for', 'nope 2\r'],
    ['Enter passphrase for', 'nope 3\r'],
  ]);
  assert.equal(d.exit, 2, d.output);
  assert.equal(d.output.match(/Enter passphrase for/g)?.length, 3, 'asked three times by default');
});

test('add-key asks for the existing passphrase (retried), then a new one twice', () => {
  const r = underPty(['add-key', vol, ...KDF], [
    ['Enter passphrase for', 'typo\r'],
    ['Enter passphrase for', `${GOOD}\r`],
    ['Enter new passphrase for key slot: ', 'second pass\r'],
    ['Verify passphrase: ', 'second pass\r'],
  ]);
  assert.equal(r.exit, 0, r.output);
  assert.match(r.output, /Key slot 1 created/);
  const p2 = join(tmp.dir, 'pass2');
  writeFileSync(p2, 'second pass');
  assert.match(runCli(['test-key', vol, '--key-file', p2]).stdout, /Key slot 1 unlocked/);
});

test('convert: a typed source passphrase and a typed target passphrase (asked twice)', () => {
  const out = join(tmp.dir, 'copy.luks');
  const r = underPty(['convert', vol, out, '--dst-format', 'luks1', ...KDF], [
    ['Enter passphrase for', `${GOOD}\r`],
    ['Enter passphrase for', 'target pass\r'],
    ['Verify passphrase: ', 'target pass\r'],
  ]);
  assert.equal(r.exit, 0, r.output);
  const pass = join(tmp.dir, 'pass');
  const tp = join(tmp.dir, 'target-pass');
  writeFileSync(tp, 'target pass');
  const v = runCli(['verify', vol, out, '--src-key-file', pass, '--dst-key-file', tp]);
  assert.equal(v.status, 0, v.stderr);
});

test('a plain volume with a typed passphrase: the line is hashed (sha256 by default) into the key', { skip: needTools('python3') }, () => {
  // Key for "brickcrypt", sha256, 256 bits (plain-key.test.ts); data encrypted with AES-128-XTS, IV = sector.
  const key = Buffer.from('ef3696d54cbb6eae7440ff83a73a5b1cdef47151a03f543cd516769cea010beb', 'hex');
  const plain = randomBytes(8 * 512);
  const enc = spawnSync(
    PYTHON,
    [
      '-c',
      `import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
k = bytes.fromhex(sys.argv[1]); d = sys.stdin.buffer.read(); o = b''
for s in range(0, len(d), 512):
    c = Cipher(algorithms.AES(k), modes.XTS((s // 512).to_bytes(8, 'little') + bytes(8))).encryptor()
    o += c.update(d[s:s+512]) + c.finalize()
sys.stdout.buffer.write(o)`,
      key.toString('hex'),
    ],
    { input: plain },
  );
  if (enc.status !== 0) {
    assert.equal(needTools('python3-cryptography-module'), false);
    return;
  }
  const volPath = join(tmp.dir, 'typed.plain');
  writeFileSync(volPath, enc.stdout);
  const out = join(tmp.dir, 'typed.raw');
  const r = underPty(['convert', volPath, out, '--src-format', 'plain', '--src-cipher', 'aes-xts-plain64', '--src-key-size', '256', '--dst-format', 'raw'], [
    ['Enter passphrase for', 'brickcrypt\r'],
  ]);
  assert.equal(r.exit, 0, r.output);
  assert.ok(readFileSync(out).equals(plain));
});

test('without a terminal and without a key option: a usage error (exit 1), no prompt', () => {
  const r = runCli(['test-key', vol], { input: `${GOOD}\n` });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /error INVALID_ARGUMENT: .*not a terminal/);
  assert.doesNotMatch(r.stderr + r.stdout, /Enter passphrase/);
  const f = runCli(['format', join(tmp.dir, 'never.luks'), '--type', 'luks2', '--size', '4M', ...KDF], { input: '' });
  assert.equal(f.status, 1, f.stderr);
  assert.equal(existsSync(join(tmp.dir, 'never.luks')), false);
});
