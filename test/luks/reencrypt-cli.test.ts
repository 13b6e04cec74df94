/**
 * `brickcrypt reencrypt` end to end: help, a re-key on a cryptsetup volume, refusals with their
 * exit codes (nothing written), the writer lock, SIGINT stopping at a resumable point, and real
 * `kill -9` at random instants resumed by brickcrypt and by cryptsetup.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EXIT_CODES } from '../../src/errors.js';
import { VolumeLock } from '../../src/devices/volume-lock.js';
import { cliPath, needTools, run, runCli, tempDir } from '../helpers/tools.js';
import { CS_OFFLINE, cryptsetupMetadata, cryptsetupVolumeWithData, readPlaintext } from '../helpers/reencrypt-states.js';
import { equalPlain } from '../helpers/plaintext.js';

const skip = needTools('cryptsetup');
const PASS = 'cli pass';
const FAST = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'];
const fileHash = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

const same = equalPlain;

async function setup(dir: string, size = 40 << 20): Promise<{ img: string; keyFile: string; plain: Uint8Array }> {
  const img = join(dir, 'vol.img');
  const keyFile = join(dir, 'key');
  writeFileSync(keyFile, PASS);
  return { img, keyFile, plain: await cryptsetupVolumeWithData(img, size, keyFile) };
}

test('reencrypt --help lists cryptsetup option names and examples', () => {
  const out = runCli(['reencrypt', '--help']).stdout;
  for (const opt of ['--resume-only', '--resilience', '--hotzone-size', '--cipher', '--key-size', '--sector-size', '--key-file', '--key-slot', '--key-id', '--encrypt', '--decrypt', '--type', '--reduce-device-size', '--header', '--json']) {
    assert.ok(out.includes(opt), opt);
  }
  assert.match(out, /Examples:\n\s+brickcrypt reencrypt vol\.img --key-file pass\.txt/);
});

test('reencrypt re-keys a cryptsetup volume; refusals exit with their codes and write nothing', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { img, keyFile, plain } = await setup(dir);
    const wrong = join(dir, 'wrong');
    writeFileSync(wrong, 'nope');
    const before = fileHash(img);
    let r = runCli(['reencrypt', img, '--key-file', wrong, ...FAST]);
    assert.equal(r.status, EXIT_CODES.permission, r.stderr);
    r = runCli(['reencrypt', img, '--key-file', keyFile, '--resume-only']);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    // --encrypt of a device that is already LUKS2 is a usage error (nothing to encrypt).
    r = runCli(['reencrypt', img, '--key-file', keyFile, '--encrypt', '--type', 'luks2']);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    assert.match(r.stderr, /already holds a LUKS2 volume/);
    r = runCli(['reencrypt', img, '--key-file', keyFile, '--resilience', 'mirror']);
    assert.equal(r.status, EXIT_CODES.usage, r.stderr);
    const lock = await VolumeLock.acquire(img);
    try {
      r = runCli(['reencrypt', img, '--key-file', keyFile, ...FAST]);
      assert.equal(r.status, EXIT_CODES.busy, r.stderr);
    } finally {
      await lock.release();
    }
    assert.equal(fileHash(img), before);
    r = runCli(['reencrypt', img, '--key-file', keyFile, ...FAST, '--cipher', 'aes-xts-plain64', '--key-size', '256', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const done = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    assert.equal(done.event, 'done');
    assert.equal(done.finished, true);
    assert.ok(done.peakRssBytes < 256 * 1024 * 1024);
    same(await readPlaintext(img, PASS), plain, 'after reencrypt');
    run('cryptsetup', ['open', '--test-passphrase', '--disable-locks', '--key-file', keyFile, img]);
    assert.match(runCli(['dump', img]).stdout, /Key:\s+256 bits/);
  } finally {
    cleanup();
  }
});

/** Starts the CLI on `img` and sends `signal` after `ms`; resolves with the exit code and stderr. */
function runAndSignal(args: string[], ms: number, signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill(signal), ms);
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      resolve({ code, signal: sig, stderr });
    });
  });
}

test('SIGINT stops reencrypt at a resumable point (exit 130); --resume-only finishes it', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { img, keyFile, plain } = await setup(dir, 144 << 20);
    let stopped = false;
    for (const ms of [1500, 800, 400]) {
      const r = await runAndSignal(['reencrypt', img, '--key-file', keyFile, ...FAST, '--hotzone-size', '256K'], ms, 'SIGINT');
      if (r.code === 0) continue;
      assert.equal(r.code, 130, r.stderr);
      assert.match(r.stderr, /resume with `brickcrypt reencrypt --resume-only/);
      stopped = true;
      break;
    }
    if (!stopped) return assert.fail('reencrypt finished before SIGINT');
    const m = cryptsetupMetadata(img);
    assert.deepEqual(m.config.requirements.mandatory, ['online-reencrypt-v2']);
    assert.ok(!Object.values(m.segments).some((s: any) => s.flags?.includes('in-reencryption')), 'stopped inside a hot zone');
    const r = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]);
    assert.equal(r.status, 0, r.stderr);
    same(await readPlaintext(img, PASS), plain, 'resumed');
  } finally {
    cleanup();
  }
});

test('kill -9 of reencrypt at random instants: brickcrypt and cryptsetup each finish it with the original plaintext', { skip }, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { img, keyFile, plain } = await setup(dir, 144 << 20);
    const copy = join(dir, 'copy.img');
    let kills = 0;
    for (let i = 0; i < 6; i++) {
      const ms = 300 + Math.floor(Math.random() * 1500);
      // A fresh run alternates checksum and journal; a run over a recorded one resumes it (automatically).
      const fresh = cryptsetupMetadata(img).config.requirements === undefined;
      const r = await runAndSignal(['reencrypt', img, '--key-file', keyFile, ...FAST, '--hotzone-size', '256K', ...(fresh && i % 2 ? ['--resilience', 'journal'] : [])], ms, 'SIGKILL');
      if (r.signal !== 'SIGKILL') break;
      kills++;
      // Every killed state is also finished by cryptsetup, on a copy.
      writeFileSync(copy, readFileSync(img));
      const m = cryptsetupMetadata(copy);
      if (m.config.requirements !== undefined) {
        if (Object.values(m.segments).some((s: any) => s.flags?.includes('in-reencryption'))) {
          run('cryptsetup', ['repair', '--batch-mode', '--disable-locks', '--key-file', keyFile, copy]);
        }
        run('cryptsetup', ['reencrypt', '--resume-only', ...CS_OFFLINE, '--key-file', keyFile, copy]);
      }
      same(await readPlaintext(copy, PASS), plain, `cryptsetup after kill ${kills} at ${ms} ms`);
      // brickcrypt resumes the original only on every other kill; the others start a fresh run over it.
      // (A kill before the state was recorded leaves nothing to resume, and the volume unchanged.)
      if (i % 2 === 1 && m.config.requirements !== undefined) {
        const res = runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]);
        assert.equal(res.status, 0, res.stderr);
      }
      if (i % 2 === 1 || m.config.requirements === undefined) same(await readPlaintext(img, PASS), plain, `brickcrypt after kill ${kills} at ${ms} ms`);
    }
    assert.ok(kills >= 2, `only ${kills} kills landed`);
    const m = cryptsetupMetadata(img);
    if (m.config.requirements !== undefined) assert.equal(runCli(['reencrypt', '--resume-only', img, '--key-file', keyFile]).status, 0);
    same(await readPlaintext(img, PASS), plain, 'final');
  } finally {
    cleanup();
  }
});
