import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, readFileSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { cliPath, needTools, run, runCli, tempDir, whichTool } from '../helpers/tools.js';
import { VolumeLock, lockPathFor } from '../../src/devices/volume-lock.js';
import { LockedError } from '../../src/errors.js';
import { nbdUri } from '../../src/nbd/uri.js';

const execFileP = promisify(execFile);
const tool = async (cmd: string, args: string[]): Promise<string> => (await execFileP(whichTool(cmd) ?? cmd, args, { encoding: 'utf8', timeout: 120_000 })).stdout;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const tmp = tempDir('brickcrypt-attach-');
after(() => tmp.cleanup());

test('VolumeLock: exclusive, stale pid taken over, released', async () => {
  const vol = join(tmp.dir, 'lockme.img');
  writeFileSync(vol, '');
  const a = await VolumeLock.acquire(vol);
  // Another live holder: our parent process stands in for a second writer.
  await assert.rejects(VolumeLock.acquire(vol, process.ppid), LockedError);
  await a.release();
  assert.equal(existsSync(lockPathFor(vol)), false);
  // A lock left by a dead process is stale.
  writeFileSync(lockPathFor(vol), '2147483646\n');
  const b = await VolumeLock.acquire(vol);
  assert.equal(readFileSync(lockPathFor(vol), 'utf8').trim(), String(process.pid));
  await b.release();
});

test('nbdUri', () => {
  assert.equal(nbdUri({ socket: '/run/a.sock', exportName: 'disk' }), 'nbd+unix:///disk?socket=/run/a.sock');
  assert.equal(nbdUri({ socket: '/run/a.sock', exportName: '', tls: true }), 'nbds+unix:///?socket=/run/a.sock');
  assert.equal(nbdUri({ host: '::1', port: 10809, exportName: 'a b' }), 'nbd://[::1]:10809/a%20b');
});

test('attach raw file: daemon, nbdinfo, nbdcopy write, lock refuses a second writer, detach flushes and cleans up', { skip: needTools('nbdinfo', 'nbdcopy') }, async () => {
  const vol = join(tmp.dir, 'raw.img');
  writeFileSync(vol, "");
  truncateSync(vol, 4 << 20);
  const sock = join(tmp.dir, 'raw.sock');
  const pid = join(tmp.dir, 'raw.pid');
  const r = runCli(['attach', vol, '--socket', sock, '--daemon', '--pid-file', pid, '--export-name', 'vol']);
  assert.equal(r.status, 0, r.stderr);
  const uri = r.stdout.split('\n')[0]!;
  assert.equal(uri, `nbd+unix:///vol?socket=${sock}`);
  try {
    const j = JSON.parse(await tool('nbdinfo', ['--json', uri]));
    assert.equal(j.exports[0]['export-size'], 4 << 20);
    assert.equal(j.exports[0].is_read_only, false);
    const second = runCli(['attach', vol, '--socket', join(tmp.dir, 'other.sock')]);
    assert.equal(second.status, 5);
    assert.match(second.stderr, /LOCKED/);
    const data = randomBytes(4 << 20);
    writeFileSync(join(tmp.dir, 'data.bin'), data);
    await tool('nbdcopy', [join(tmp.dir, 'data.bin'), uri]);
    const d = runCli(['detach', '--socket', sock]);
    assert.equal(d.status, 0, d.stderr);
    assert.equal(sha(readFileSync(vol)), sha(data));
    assert.equal(existsSync(lockPathFor(vol)), false);
    assert.equal(existsSync(sock), false);
    assert.equal(existsSync(pid), false);
  } finally {
    if (existsSync(pid)) runCli(['detach', '--pid-file', pid]);
  }
});

test('attach qcow2: served read-only with its allocation map', { skip: needTools('qemu-img', 'qemu-io', 'nbdinfo') }, async () => {
  const img = join(tmp.dir, 'img.qcow2');
  run('qemu-img', ['create', '-f', 'qcow2', img, '4M']);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 65536 4096', img]);
  const sock = join(tmp.dir, 'q.sock');
  const r = runCli(['attach', img, '--socket', sock, '--daemon', '--pid-file', join(tmp.dir, 'q.pid')]);
  assert.equal(r.status, 0, r.stderr);
  const uri = r.stdout.split('\n')[0]!;
  try {
    const j = JSON.parse(await tool('nbdinfo', ['--json', uri]));
    assert.equal(j.exports[0].is_read_only, true);
    assert.equal(j.exports[0]['export-size'], 4 << 20);
    const map = JSON.parse(await tool('nbdinfo', ['--map', '--json', uri])) as Array<{ offset: number; length: number; type: number }>;
    assert.deepEqual(map.filter((m) => m.type === 0).map((m) => [m.offset, m.length]), [[65536, 65536]]);
    const out = await tool('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x33 65536 4096', uri]);
    assert.match(out, /read 4096\/4096/);
  } finally {
    assert.equal(runCli(['detach', '--socket', sock]).status, 0);
  }
});

test('attach: argument errors and non-loopback refusal', () => {
  const vol = join(tmp.dir, 'args.img');
  writeFileSync(vol, "");
  truncateSync(vol, 1 << 20);
  assert.equal(runCli(['attach', vol]).status, 1);
  assert.equal(runCli(['attach', vol, '--socket', 'a', '--listen', '127.0.0.1:1']).status, 1);
  assert.equal(runCli(['attach', vol, '--socket', join(tmp.dir, 'x.sock'), '--daemon']).status, 1);
  const any = runCli(['attach', vol, '--listen', '0.0.0.0:0']);
  assert.equal(any.status, 1);
  assert.match(any.stderr, /Refusing/);
  assert.equal(runCli(['detach', '--pid-file', join(tmp.dir, 'none.pid')]).status, 4);
});

test('attach on TCP loopback, SIGINT in the foreground flushes and exits 0', { skip: needTools('nbdinfo') }, async () => {
  const vol = join(tmp.dir, 'tcp.img');
  writeFileSync(vol, "");
  truncateSync(vol, 1 << 20);
  const child = spawn(process.execPath, [cliPath, 'attach', vol, '--listen', '127.0.0.1:0', '--read-only'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const uri = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`attach exited ${code}`)));
  });
  assert.match(uri, /^nbd:\/\/127\.0\.0\.1:\d+\/$/);
  const j = JSON.parse(await tool('nbdinfo', ['--json', uri]));
  assert.equal(j.exports[0].is_read_only, true);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGINT');
  assert.equal(await exited, 0);
});

for (const type of ['luks1', 'luks2'] as const) {
  test(`attach ${type}: writes through NBD are encrypted on disk and decrypt with ${type === 'luks1' ? "QEMU's luks driver" : 'a read-only re-attach'}`, { skip: needTools('cryptsetup', 'qemu-img', 'nbdcopy') }, async () => {
    const vol = join(tmp.dir, `${type}.img`);
    const key = join(tmp.dir, `${type}.key`);
    writeFileSync(vol, "");
    truncateSync(vol, 20 << 20);
    writeFileSync(key, `pass-${type}`);
    run('cryptsetup', ['luksFormat', '--type', type, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '-q', vol, key]);
    const sock = join(tmp.dir, `${type}.sock`);
    const pid = join(tmp.dir, `${type}.pid`);
    const r = runCli(['attach', vol, '--key-file', key, '--socket', sock, '--daemon', '--pid-file', pid]);
    assert.equal(r.status, 0, r.stderr);
    const uri = r.stdout.split('\n')[0]!;
    const data = randomBytes(1 << 20);
    const dataFile = join(tmp.dir, `${type}.data`);
    writeFileSync(dataFile, data);
    try {
      await tool('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', dataFile, uri]);
    } finally {
      assert.equal(runCli(['detach', '--pid-file', pid]).status, 0);
    }
    const disk = readFileSync(vol);
    assert.equal(disk.includes(data.subarray(0, 64)), false, 'plaintext must not appear on disk');
    const out = join(tmp.dir, `${type}.plain`);
    if (type === 'luks1') {
      await tool('qemu-img', ['convert', '--object', `secret,id=sec0,file=${key}`, '--image-opts', `driver=luks,key-secret=sec0,file.filename=${vol}`, '-O', 'raw', out]);
    } else {
      const ro = runCli(['attach', vol, '--key-file', key, '--socket', sock, '--daemon', '--pid-file', pid, '--read-only']);
      assert.equal(ro.status, 0, ro.stderr);
      try {
        await tool('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', ro.stdout.split('\n')[0]!, out]);
      } finally {
        runCli(['detach', '--pid-file', pid]);
      }
    }
    assert.equal(sha(readFileSync(out).subarray(0, 1 << 20)), sha(data));
    // A wrong key is refused before anything is served.
    writeFileSync(key, 'wrong');
    const bad = runCli(['attach', vol, '--key-file', key, '--socket', sock]);
    assert.equal(bad.status, 2, bad.stderr);
    assert.equal(existsSync(lockPathFor(vol)), false);
  });
}

test('attach LUKS with the passphrase from a key manager (--key-manager local:… --key-id)', { skip: needTools('cryptsetup', 'nbdinfo') }, async () => {
  const ks = `local:${join(tmp.dir, 'ks.db')}`;
  const kek = join(tmp.dir, 'kek');
  const pass = join(tmp.dir, 'km.pass');
  writeFileSync(pass, randomBytes(24).toString('base64'));
  assert.equal(runCli(['key', 'init', '--key-manager', ks, '--kek-file', kek]).status, 0);
  const stored = runCli(['key', 'store', '--type', 'passphrase', '--file', pass, '--key-manager', ks, '--kek-file', kek]);
  assert.equal(stored.status, 0, stored.stderr);
  const id = stored.stdout.trim();
  const vol = join(tmp.dir, 'km.img');
  writeFileSync(vol, '');
  truncateSync(vol, 20 << 20);
  run('cryptsetup', ['luksFormat', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '-q', vol, pass]);
  const sock = join(tmp.dir, 'km.sock');
  const r = runCli(['attach', vol, '--key-manager', ks, '--kek-file', kek, '--key-id', id, '--socket', sock, '--daemon', '--pid-file', join(tmp.dir, 'km.pid')]);
  assert.equal(r.status, 0, r.stderr);
  try {
    assert.equal((await tool('nbdinfo', ['--size', r.stdout.split('\n')[0]!])).trim(), String(4 << 20));
  } finally {
    assert.equal(runCli(['detach', '--socket', sock]).status, 0);
  }
});

test('attach --tls-psk: nbds URI, plaintext clients refused', { skip: needTools('nbdinfo') }, async () => {
  const vol = join(tmp.dir, 'tls.img');
  writeFileSync(vol, '');
  truncateSync(vol, 1 << 20);
  const psk = join(tmp.dir, 'cli.psk');
  writeFileSync(psk, `nbduser:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const sock = join(tmp.dir, 'tls.sock');
  const r = runCli(['attach', vol, '--tls-psk', psk, '--socket', sock, '--daemon', '--pid-file', join(tmp.dir, 'tls.pid')]);
  assert.equal(r.status, 0, r.stderr);
  try {
    assert.equal(r.stdout.split('\n')[0], `nbds+unix:///?socket=${sock}`);
    const size = await tool('nbdinfo', ['--size', `nbds+unix://nbduser@/?socket=${sock}&tls-psk-file=${psk}`]);
    assert.equal(size.trim(), String(1 << 20));
    await assert.rejects(tool('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`]));
  } finally {
    assert.equal(runCli(['detach', '--socket', sock]).status, 0);
  }
});

test('attach --print qemu: prints QEMU luks-driver options and a 0600 secret file instead of serving; LUKS2 is refused', { skip: needTools('cryptsetup') }, () => {
  const vol = join(tmp.dir, 'native.img');
  const key = join(tmp.dir, 'native.key');
  writeFileSync(vol, '');
  truncateSync(vol, 8 << 20);
  writeFileSync(key, 'native-pass');
  run('cryptsetup', ['luksFormat', '--type', 'luks1', '--pbkdf-force-iterations', '1000', '-q', vol, key]);
  const secret = join(tmp.dir, 'native.secret');
  const r = runCli(['attach', vol, '--key-file', key, '--print', 'qemu', '--secret-file', secret]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /driver=luks/);
  assert.equal(readFileSync(secret, 'utf8'), 'native-pass');
  assert.equal(existsSync(lockPathFor(vol)), false);
  run('cryptsetup', ['luksFormat', '--type', 'luks2', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '-q', vol, key]);
  const two = runCli(['attach', vol, '--key-file', key, '--print', 'qemu', '--secret-file', join(tmp.dir, 'native2.secret')]);
  assert.equal(two.status, 4);
  assert.match(two.stderr, /UNSUPPORTED/);
});
