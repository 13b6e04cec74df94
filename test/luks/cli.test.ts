/**
 * The LUKS commands through the real CLI entry point: exit codes, --help, key-file semantics
 * (every byte counts, offset/size, stdin), and the results checked with cryptsetup where useful.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
const COMMANDS = ['format', 'dump', 'test-key', 'add-key', 'change-key', 'remove-key', 'kill-slot', 'header-backup', 'header-restore'];

test('--help works for every LUKS command', () => {
  for (const cmd of COMMANDS) {
    const r = runCli([cmd, '--help']);
    assert.equal(r.status, 0, cmd);
    assert.match(r.stdout, new RegExp(`Usage: brickcrypt ${cmd}`), cmd);
    assert.match(r.stdout, /Exit codes/, cmd);
  }
  assert.match(runCli(['format', '--help']).stdout, /--pbkdf-force-iterations[\s\S]*--force/);
  assert.match(runCli(['--help']).stdout, /test-key/);
});

test('format / test-key / dump: exit codes and key-file semantics', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const vol = join(dir, 'v.img');
    const key = join(dir, 'key');
    writeFileSync(key, 'pw\n');
    let r = runCli(['format', vol, '--type', 'luks2', '--size', '4M', '--key-file', key, ...FAST, '--label', 'lab', '--sector-size', '512']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(vol).size, 16 * 1024 * 1024 + 4 * 1024 * 1024, 'the file grows by the header');
    assert.equal(runCli(['test-key', vol, '--key-file', key]).status, 0);
    // The trailing newline is part of the passphrase.
    writeFileSync(join(dir, 'nonl'), 'pw');
    r = runCli(['test-key', vol, '--key-file', join(dir, 'nonl')]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /error WRONG_PASSPHRASE/);
    assert.equal(runCli(['test-key', vol, '--key-file', '-'], { input: 'pw\n' }).status, 0);
    assert.equal(runCli(['test-key', vol, '--key-file', '-'], { input: 'pw' }).status, 2);
    writeFileSync(join(dir, 'padded'), 'XXpw\nYY');
    assert.equal(runCli(['test-key', vol, '--key-file', join(dir, 'padded'), '--keyfile-offset', '2', '--keyfile-size', '3']).status, 0);
    assert.equal(runCli(['test-key', vol, '--key-file', join(dir, 'padded'), '--keyfile-offset', '2']).status, 2);
    assert.equal(runCli(['test-key', vol, '--key-file', join(dir, 'missing')]).status, 4);
    assert.equal(runCli(['test-key', vol, '--key-file', key, '--key-slot', '9']).status, 4, 'inactive keyslot');
    assert.equal(runCli(['test-key', join(dir, 'padded'), '--key-file', key]).status, 4, 'not a LUKS device');
    const dump = runCli(['dump', vol]);
    assert.equal(dump.status, 0);
    assert.match(dump.stdout, /Version:\s+2[\s\S]*Label:\s+lab[\s\S]*sector: 512 \[bytes\]/);
    const json = JSON.parse(runCli(['dump', vol, '--json']).stdout);
    assert.equal(json.version, 2);
    assert.equal(json.metadata.segments['0'].sector_size, 512);
    // Refuses to format over a LUKS header without --force.
    r = runCli(['format', vol, '--type', 'luks1', '--key-file', key, ...FAST]);
    assert.equal(r.status, 5);
    assert.match(readFileSync(vol).subarray(0, 8).toString('latin1'), /^LUKS\xba\xbe\x00\x02/);
    r = runCli(['format', vol, '--type', 'luks1', '--key-file', key, ...FAST, '--force', '--cipher', 'aes-cbc-essiv:sha256', '--key-size', '256']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(runCli(['dump', vol]).stdout, /Version:\s+1[\s\S]*Cipher mode:\s+cbc-essiv:sha256[\s\S]*Payload offset:\s+4096/);
    // Bad arguments exit 1; a missing file without --size exits 4 and is not created.
    assert.equal(runCli(['format', vol, '--type', 'luks3', '--key-file', key]).status, 1);
    assert.equal(runCli(['format', join(dir, 'new.img'), '--type', 'luks2', '--key-file', key, ...FAST]).status, 4);
    assert.equal(existsSync(join(dir, 'new.img')), false);
    r = runCli(['format', join(dir, 'ser.img'), '--type', 'luks2', '--size', '1M', '--key-file', key, ...FAST, '--cipher', 'serpent-xts-plain64']);
    assert.equal(r.status, 4);
    assert.match(r.stderr, /UNSUPPORTED_CIPHER.*serpent/);
  } finally {
    cleanup();
  }
});

test('add-key / change-key / remove-key / kill-slot / header-backup / header-restore', { skip: needTools('cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const vol = join(dir, 'v.img');
    const k = (name: string, text: string) => {
      writeFileSync(join(dir, name), text);
      return join(dir, name);
    };
    const a = k('a', 'alpha');
    const b = k('b', 'bravo');
    const c = k('c', 'charlie');
    assert.equal(runCli(['format', vol, '--type', 'luks1', '--size', '1M', '--key-file', a, ...FAST]).status, 0);
    assert.equal(statSync(vol).size, 2 * 1024 * 1024 + 1024 * 1024);
    let r = runCli(['add-key', vol, '--key-file', a, '--new-key-file', b, '--slot', '4', ...FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Key slot 4 created/);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', b, '--key-slot', '4', vol]).status, 0);
    assert.equal(runCli(['add-key', vol, '--key-file', a, '--new-key-file', c, '--slot', '4', ...FAST]).status, 5, 'slot busy');
    assert.equal(runCli(['add-key', vol, '--key-file', c, '--new-key-file', c, ...FAST]).status, 2, 'wrong passphrase');
    r = runCli(['change-key', vol, '--key-file', b, '--new-key-file', c, ...FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', c, vol]).status, 0);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', b, vol]).status, 2);
    const backup = join(dir, 'backup.hdr');
    assert.equal(runCli(['header-backup', vol, backup]).status, 0);
    assert.equal(runCli(['header-backup', vol, backup]).status, 5, 'backup file exists');
    assert.equal(statSync(backup).size, 2068480);
    assert.match(runCli(['dump', backup]).stdout, /Payload offset:\s+4096/, 'a backup file can be dumped');
    assert.equal(runCli(['test-key', backup, '--key-file', c]).status, 0, 'and its passphrases tested');
    r = runCli(['remove-key', vol, '--key-file', c]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', c, vol]).status, 2);
    assert.equal(runCli(['kill-slot', vol, '0']).status, 1, 'last keyslot needs --force');
    assert.equal(runCli(['kill-slot', vol, '0', '--force']).status, 0);
    assert.match(run('cryptsetup', ['luksDump', vol]), /Key Slot 0: DISABLED/);
    assert.equal(runCli(['header-restore', vol, backup]).status, 0);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', a, vol]).status, 0);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', c, vol]).status, 0);
    assert.equal(runCli(['header-restore', vol, a]).status, 4, 'not a LUKS backup');
    // Detached header through the CLI.
    const data = join(dir, 'data.img');
    const hdr = join(dir, 'hdr.img');
    r = runCli(['format', data, '--type', 'luks2', '--size', '1M', '--header', hdr, '--key-file', a, ...FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(statSync(data).size, 1024 * 1024);
    assert.equal(runStatus('cryptsetup', ['open', '--test-passphrase', '--header', hdr, '--key-file', a, data]).status, 0);
    assert.equal(runCli(['test-key', data, '--header', hdr, '--key-file', a]).status, 0);
    assert.match(runCli(['dump', data, '--header', hdr]).stdout, /offset: 0 \[bytes\]/);
  } finally {
    cleanup();
  }
});
