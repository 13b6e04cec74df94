/**
 * End to end: a LUKS volume served by `brickcrypt attach` carries a real ext4 file system.
 * The kernel reaches the NBD server through nbdfuse (NBD export as a FUSE file) and a loop
 * device, so no nbd kernel module is needed. The files written through the mount are then
 * read back without brickcrypt's server: from `brickcrypt convert … raw` with debugfs, and the
 * ciphertext is decrypted independently with the volume key cryptsetup dumps.
 *
 * Needs root (loop devices, mount) and /dev/fuse. Locally a missing privilege skips loudly;
 * under CI=true it is a failure, like a missing tool.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inCI, needTools, run, runCli, runStatus, tempDir, whichTool } from '../helpers/tools.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const tmp = tempDir('brickcrypt-e2e-');
after(() => tmp.cleanup());

/** Root and /dev/fuse, or a skip reason (locally) / a thrown error (CI). */
function needMountPrivileges(): false | string {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (loop devices and mount)');
  if (!existsSync('/dev/fuse')) missing.push('/dev/fuse');
  if (missing.length === 0) return false;
  const message = `MISSING PRIVILEGE(S): ${missing.join(', ')}`;
  if (inCI) throw new Error(`${message} (CI=true makes this a failure)`);
  process.stderr.write(`\n*** SKIPPING end-to-end mount test: ${message} ***\n`);
  return message;
}

const tools = ['nbdfuse', 'losetup', 'mkfs.ext4', 'debugfs', 'fusermount3', 'mount', 'umount', 'cryptsetup', 'e2fsck'] as const;
const skip = needTools(...tools) || needMountPrivileges();

async function waitFor(what: string, cond: () => boolean, child?: ChildProcess, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (child && child.exitCode !== null) throw new Error(`${what}: process exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The volume key from `cryptsetup luksDump --dump-volume-key` ("MK dump:" hex lines). */
function cryptsetupVolumeKey(vol: string, keyFile: string): Buffer {
  const out = run('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file', keyFile, vol]);
  const m = /MK dump:\s*((?:[0-9a-f]{2}\s+)+)/i.exec(out);
  assert.ok(m, `no MK dump in:\n${out}`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'hex');
}

/**
 * aes-xts-plain64 decryption written against Node's OpenSSL directly (one cipher per
 * encryption sector; IV = little-endian 64-bit count of 512-byte units, cryptsetup's default).
 */
function decryptXtsPlain64(cipherText: Buffer, key: Buffer, sectorSize: number): Buffer {
  const out = Buffer.alloc(cipherText.length);
  const algo = key.length === 64 ? 'aes-256-xts' : 'aes-128-xts';
  const iv = Buffer.alloc(16);
  for (let pos = 0; pos < cipherText.length; pos += sectorSize) {
    iv.fill(0);
    iv.writeBigUInt64LE(BigInt(pos / 512));
    const d = createDecipheriv(algo, key, iv).setAutoPadding(false);
    const p = d.update(cipherText.subarray(pos, pos + sectorSize));
    p.copy(out, pos);
    d.final();
  }
  return out;
}

/** Payload offset in bytes from luksDump ("Payload offset:" in 512-byte sectors for LUKS1, "offset: N [bytes]" for LUKS2). */
function payloadOffset(vol: string): { offset: number; sectorSize: number } {
  const out = run('cryptsetup', ['luksDump', vol]);
  const l1 = /Payload offset:\s*(\d+)/.exec(out);
  if (l1) return { offset: Number(l1[1]) * 512, sectorSize: 512 };
  const off = /Data segments:[\s\S]*?offset:\s*(\d+) \[bytes\]/.exec(out);
  const ss = /Data segments:[\s\S]*?sector:\s*(\d+) \[bytes\]/.exec(out);
  assert.ok(off && ss, `no data segment in:\n${out}`);
  return { offset: Number(off[1]), sectorSize: Number(ss[1]) };
}

// Sanity check of the reference decryptor itself (round trip with the matching encryptor).
test('reference aes-xts-plain64 decryptor round trip', () => {
  const key = randomBytes(64);
  const plain = randomBytes(8192);
  const enc = Buffer.alloc(plain.length);
  for (let pos = 0; pos < plain.length; pos += 4096) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(pos / 512));
    createCipheriv('aes-256-xts', key, iv).update(plain.subarray(pos, pos + 4096)).copy(enc, pos);
  }
  assert.equal(sha(decryptXtsPlain64(enc, key, 4096)), sha(plain));
  assert.notEqual(sha(decryptXtsPlain64(enc, key, 512)), sha(plain));
});

for (const type of ['luks2', 'luks1'] as const) {
  test(`${type}: attach -> nbdfuse -> loop -> mkfs.ext4 -> mount -> files; read back via convert+debugfs and the cryptsetup volume key`, { skip, timeout: 60_000 }, async () => {
    const dir = join(tmp.dir, type);
    mkdirSync(dir);
    const vol = join(dir, 'vol.luks');
    const key = join(dir, 'key');
    const sock = join(dir, 'nbd.sock');
    const pid = join(dir, 'attach.pid');
    const fuseDir = join(dir, 'fuse');
    const mnt = join(dir, 'mnt');
    mkdirSync(fuseDir);
    mkdirSync(mnt);
    writeFileSync(key, randomBytes(18).toString('base64'));
    const f = runCli(['format', vol, '--type', type, '--size', '64M', '--key-file', key, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000']);
    assert.equal(f.status, 0, f.stderr);

    const files = new Map<string, Buffer>([
      ['small.bin', randomBytes(1234)],
      ['block.bin', randomBytes(65536)],
      ['big.bin', randomBytes(3 * 1024 * 1024 + 777)],
    ]);

    let fuse: ChildProcess | undefined;
    let fuseMounted = false;
    let loop: string | undefined;
    let mounted = false;
    try {
      const a = runCli(['attach', vol, '--key-file', key, '--socket', sock, '--daemon', '--pid-file', pid]);
      assert.equal(a.status, 0, a.stderr);
      const uri = a.stdout.split('\n')[0]!;
      assert.equal(uri, `nbd+unix:///?socket=${sock}`);

      let fuseErr = '';
      fuse = spawn(whichTool('nbdfuse')!, [fuseDir, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
      fuse.stderr!.on('data', (d: Buffer) => (fuseErr += d.toString()));
      fuseMounted = true;
      await waitFor(`nbdfuse (${fuseErr})`, () => existsSync(join(fuseDir, 'nbd')), fuse);

      loop = run('losetup', ['--find', '--show', join(fuseDir, 'nbd')]).trim();
      assert.match(loop, /^\/dev\/loop\d+$/);
      run('mkfs.ext4', ['-q', loop]);
      const m = runStatus('mount', [loop, mnt]);
      if (m.status !== 0) {
        const msg = `mount ${loop} failed: ${m.stderr.trim()}`;
        if (inCI || !/permission|denied|EPERM|not permitted/i.test(m.stderr)) assert.fail(msg);
        process.stderr.write(`\n*** SKIPPING rest of end-to-end mount test: ${msg} ***\n`);
        return;
      }
      mounted = true;
      for (const [name, data] of files) writeFileSync(join(mnt, name), data);
      mkdirSync(join(mnt, 'sub'));
      writeFileSync(join(mnt, 'sub', 'note.txt'), 'hello from the mount\n');
      run('umount', [mnt]);
      mounted = false;
      run('losetup', ['-d', loop]);
      loop = undefined;
      run('fusermount3', ['-u', fuseDir]);
      fuseMounted = false;
      const fuseGone = fuse;
      await waitFor('nbdfuse exit', () => fuseGone.exitCode !== null || fuseGone.signalCode !== null);
      fuse = undefined;
      const d = runCli(['detach', '--pid-file', pid]);
      assert.equal(d.status, 0, d.stderr);
      assert.equal(existsSync(sock), false, 'detach removes the socket');
    } finally {
      if (mounted) runStatus('umount', ['-l', mnt]);
      if (loop) runStatus('losetup', ['-d', loop]);
      if (fuseMounted) runStatus('fusermount3', ['-u', '-z', fuseDir]);
      if (fuse && fuse.exitCode === null) fuse.kill('SIGTERM');
      if (existsSync(pid)) runCli(['detach', '--pid-file', pid, '--timeout', '10']);
    }

    // Plaintext must not be on disk.
    const disk = readFileSync(vol);
    for (const data of files.values()) assert.equal(disk.includes(data.subarray(0, 64)), false, 'plaintext found in the volume file');

    // 1) brickcrypt's own decryption + debugfs (no mount needed).
    const plain = join(dir, 'plain.raw');
    const c = runCli(['convert', vol, plain, '--dst-format', 'raw', '--src-key-file', key]);
    assert.equal(c.status, 0, c.stderr);
    for (const [name, data] of files) {
      const out = join(dir, `out.${name}`);
      run('debugfs', ['-R', `dump /${name} ${out}`, plain]);
      assert.equal(sha(readFileSync(out)), sha(data), `${name} read back through debugfs`);
    }
    assert.equal(run('debugfs', ['-R', 'cat /sub/note.txt', plain]), 'hello from the mount\n');
    run('e2fsck', ['-fn', plain]);

    // 2) Independent of brickcrypt: cryptsetup's volume key and OpenSSL XTS decrypt the payload.
    const vk = cryptsetupVolumeKey(vol, key);
    assert.equal(vk.length, 64);
    const { offset, sectorSize } = payloadOffset(vol);
    assert.equal(sectorSize, type === 'luks1' ? 512 : 4096);
    const independent = decryptXtsPlain64(disk.subarray(offset, offset + (64 << 20)), vk, sectorSize);
    assert.equal(sha(independent), sha(readFileSync(plain)), 'cryptsetup volume key decrypts to the same plaintext');
  });
}
