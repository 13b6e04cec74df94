/**
 * The mandatory-requirements fence: a LUKS2 volume whose header lists requirements brickcrypt
 * does not implement, or a reencryption cryptsetup left unfinished, has its payload refused by
 * every reader (convert, verify, attach, the encrypted view) with a typed error and nothing
 * written; header-level commands (dump, test-key, header-backup) still work, and dump shows the
 * reencryption progress.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FileDevice } from '../../src/devices/file-device.js';
import { EncryptedDevice } from '../../src/devices/encrypted-device.js';
import { LuksVolume, unlockLuks } from '../../src/luks/index.js';
import { Passphrase } from '../../src/secret.js';
import { ReencryptionInProgressError, UnsupportedRequirementError, EXIT_CODES } from '../../src/errors.js';
import { verify } from '../../src/workflows/verify.js';
import { extractFixture, needFixtures, needTools, runCli, tempDir } from '../helpers/tools.js';
import { cryptsetupInitOnly, cryptsetupKilled, cryptsetupVolumeWithData } from '../helpers/reencrypt-states.js';

const fileHash = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

/** Every payload path refuses `img` with `errorClass`; header-level work succeeds; the file is unchanged. */
async function assertFenced(img: string, pass: string, keyFile: string, errorClass: typeof UnsupportedRequirementError | typeof ReencryptionInProgressError, exit: number, dir: string): Promise<void> {
  const before = fileHash(img);
  const other = join(dir, 'other.raw');
  writeFileSync(other, Buffer.alloc(4096));
  await assert.rejects(verify({ a: img, b: other, aPassphrase: async () => Passphrase.fromString(pass), workers: 1 }), errorClass);

  const file = await FileDevice.open(img);
  try {
    await assert.rejects(unlockLuks(file, Passphrase.fromString(pass)), errorClass);
    const vol = await LuksVolume.open(file);
    assert.ok(vol.payloadFence instanceof errorClass);
    assert.throws(() => vol.assertPayloadAccess(), errorClass);
    // Header-level work: test-key and header backup.
    assert.equal(typeof (await vol.testPassphrase(Passphrase.fromString(pass))), 'number');
    assert.ok((await vol.headerBackup()).length > 0);
    // The encrypted view refuses even read-only (with a key the caller got elsewhere).
    const { key } = await vol.unlock(Passphrase.fromString(pass));
    assert.throws(() => EncryptedDevice.open(file, { encryption: 'aes-xts-plain64', keyBytes: 64, sectorSize: 512, ivTweak: 0, dataOffset: 16 << 20, payloadSize: 0, assertPayloadAccess: () => vol.assertPayloadAccess() }, key, { readOnly: true }), errorClass);
    key.wipe();
  } finally {
    await file.close();
  }

  const out = join(dir, 'out.raw');
  let r = runCli(['convert', img, out, '--dst-format', 'raw', '--src-key-file', keyFile]);
  assert.equal(r.status, exit, r.stderr);
  assert.equal(existsSync(out), false);
  r = runCli(['verify', img, other, '--src-key-file', keyFile]);
  assert.equal(r.status, exit, r.stderr);
  r = runCli(['attach', img, '--key-file', keyFile, '--socket', join(dir, 'nbd.sock')], { timeout: 60_000 });
  assert.equal(r.status, exit, r.stderr);
  // Header-level commands still work.
  r = runCli(['dump', img]);
  assert.equal(r.status, 0, r.stderr);
  r = runCli(['test-key', img, '--key-file', keyFile]);
  assert.equal(r.status, 0, r.stderr);
  r = runCli(['header-backup', img, join(dir, 'hdr.bak')]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(fileHash(img), before);
}

test('luks2_header_requirements (unknown requirements): convert, verify, attach and the encrypted view refuse; dump, test-key, header-backup work', { skip: needFixtures() }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    extractFixture('luks2_header_requirements.tar.xz', dir);
    const img = join(dir, 'luks2_header_requirements');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, 'blablabl');
    const r = runCli(['convert', img, join(dir, 'x.raw'), '--dst-format', 'raw', '--src-key-file', keyFile]);
    assert.match(r.stderr, /req0, req1/);
    await assertFenced(img, 'blablabl', keyFile, UnsupportedRequirementError, EXIT_CODES.device, dir);
  } finally {
    cleanup();
  }
});

test('a reencryption cryptsetup recorded (--init-only) fences the payload with ReencryptionInProgressError; dump shows it', { skip: needTools('cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'vol.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, 'secret pass');
    await cryptsetupVolumeWithData(img, 20 << 20, keyFile);
    cryptsetupInitOnly(img, keyFile);
    const r = runCli(['convert', img, join(dir, 'x.raw'), '--dst-format', 'raw', '--src-key-file', keyFile]);
    assert.match(r.stderr, /reencrypt --resume-only/);
    await assertFenced(img, 'secret pass', keyFile, ReencryptionInProgressError, EXIT_CODES.busy, dir);
    const dump = runCli(['dump', img]).stdout;
    assert.match(dump, /Reencryption:\s+reencrypt, forward, resilience checksum\n/);
    assert.match(dump, /Progress:\s+0 of 4194304 bytes \(0\.0%\)/);
    const json = JSON.parse(runCli(['dump', img, '--json']).stdout);
    assert.deepEqual(json.reencryption, { mode: 'reencrypt', direction: 'forward', resilience: 'checksum', requirement: 'online-reencrypt-v2', interrupted: false, done: 0, total: 4 << 20 });
  } finally {
    cleanup();
  }
});

test('a cryptsetup reencrypt killed part-way fences the payload; dump shows the bytes done', { skip: needTools('cryptsetup') }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const img = join(dir, 'vol.img');
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, 'secret pass');
    await cryptsetupVolumeWithData(img, 80 << 20, keyFile);
    let killed = false;
    for (const ms of [400, 200, 100]) {
      if ((killed = await cryptsetupKilled(img, keyFile, ms, ['--hotzone-size', '64K']))) break;
    }
    assert.ok(killed, 'cryptsetup finished before it could be killed');
    const json = JSON.parse(runCli(['dump', img, '--json']).stdout);
    assert.equal(json.reencryption.total, 64 << 20);
    assert.ok(json.reencryption.done >= 0 && json.reencryption.done < 64 << 20);
    await assertFenced(img, 'secret pass', keyFile, ReencryptionInProgressError, EXIT_CODES.busy, dir);
  } finally {
    cleanup();
  }
});
