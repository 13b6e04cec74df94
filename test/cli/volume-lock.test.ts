/**
 * One writer per volume: while another live process holds `<volume>.lock` (as `attach`
 * does), commands that write the volume refuse with LOCKED (exit 5) and change nothing;
 * read-only commands still work; a stale lock (dead pid) is taken over.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { runCli, tempDir } from '../helpers/tools.js';

const FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

test('writers refuse a locked volume; readers do not; a stale lock is taken over', () => {
  const tmp = tempDir();
  try {
    const vol = join(tmp.dir, 'vol.img');
    const pass = join(tmp.dir, 'pass');
    const pass2 = join(tmp.dir, 'pass2');
    writeFileSync(pass, 'first');
    writeFileSync(pass2, 'second');
    assert.equal(runCli(['format', vol, '--type', 'luks2', '--size', '2M', '--key-file', pass, ...FAST]).status, 0);
    assert.equal(existsSync(`${vol}.lock`), false, 'format releases its lock');

    writeFileSync(`${vol}.lock`, `${process.pid}\n`); // a live holder: this test process
    const before = sha(vol);
    for (const args of [
      ['add-key', vol, '--key-file', pass, '--new-key-file', pass2, ...FAST],
      ['change-key', vol, '--key-file', pass, '--new-key-file', pass2, ...FAST],
      ['kill-slot', vol, '0', '--force'],
      ['format', vol, '--type', 'luks1', '--key-file', pass, '--force', '--pbkdf-force-iterations', '1000'],
    ]) {
      const r = runCli(args);
      assert.equal(r.status, 5, `${args[0]}: ${r.stderr}`);
      assert.match(r.stderr, /LOCKED/);
    }
    const raw = join(tmp.dir, 'src.raw');
    writeFileSync(raw, randomBytes(1 << 20));
    const conv = runCli(['convert', raw, vol, '--dst-format', 'luks1', '--dst-key-file', pass, '--force', '--pbkdf-force-iterations', '1000']);
    assert.equal(conv.status, 5, conv.stderr);
    assert.equal(sha(vol), before, 'nothing was written');
    assert.equal(runCli(['test-key', vol, '--key-file', pass]).status, 0, 'readers are not blocked');
    assert.equal(runCli(['dump', vol]).status, 0);

    writeFileSync(`${vol}.lock`, '2147483646\n'); // no such process: stale
    const r = runCli(['add-key', vol, '--key-file', pass, '--new-key-file', pass2, ...FAST]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(existsSync(`${vol}.lock`), false);
    assert.equal(runCli(['test-key', vol, '--key-file', pass2]).status, 0);
  } finally {
    tmp.cleanup();
  }
});
