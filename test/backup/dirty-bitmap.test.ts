/**
 * The dirty-chunk bitmap: its file format (offsets, digest, validation), the tracking device, and
 * how a backup uses it — only dirty chunks are read (counted at the device), a bitmap left in use
 * by a crashed writer or older than the file's last change is not trusted (every chunk is read), and
 * restores give back the exact bytes either way. End to end through `attach` (NBD writes by qemu-io,
 * a clean detach and a kill -9) in the second half.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { IntegrityError } from '../../src/errors.js';
import { SecretBytes } from '../../src/secret.js';
import type { BlockDevice } from '../../src/block-device.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { FileObjectStore } from '../../src/backup/stores/file-store.js';
import { Repository } from '../../src/backup/repository.js';
import { createBackupWithReport } from '../../src/backup/create-backup.js';
import { restoreBackup } from '../../src/backup/restore-backup.js';
import { decodeDirtyBitmap, encodeDirtyBitmap, isDirty, markRange, type DirtyBitmap } from '../../src/backup/dirty-bitmap.js';
import { bitmapPathFor, DirtyTracker, readBitmapFile } from '../../src/backup/dirty-tracking.js';
import { cliPath, needTools, run, runCli, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;
const CHUNK = 256 * 1024;

function sample(): DirtyBitmap {
  const bits = new Uint8Array(5); // 40 chunks of 256 KiB = 10 MiB
  markRange(bits, CHUNK, 3 * CHUNK + 5, 10);
  markRange(bits, CHUNK, 39 * CHUNK, CHUNK);
  return {
    state: 'clean',
    chunkSize: CHUNK,
    volumeSize: 10 * MIB,
    dev: 2049n,
    ino: 123456789n,
    ctimeNs: 1_700_000_000_123_456_789n,
    repository: '0b9f3c1e-2d4a-4e5f-8a6b-7c8d9e0f1a2b',
    base: '20260101T120000Z-0123abcd',
    pid: 0,
    bits,
  };
}

test('bitmap format: offsets table, round trip, digest, validation', () => {
  const b = sample();
  const bytes = encodeDirtyBitmap(b);
  assert.equal(bytes.length, 128 + 5 + 32);
  assert.equal(Buffer.from(bytes.subarray(0, 8)).toString('latin1'), 'BCDIRTY1');
  const v = new DataView(bytes.buffer);
  assert.equal(v.getUint16(8), 1);
  assert.equal(bytes[10], 2);
  assert.equal(v.getUint32(12), CHUNK);
  assert.equal(v.getBigUint64(16), BigInt(10 * MIB));
  assert.equal(v.getBigUint64(32), 123456789n);
  assert.equal(v.getBigUint64(40), b.ctimeNs);
  assert.equal(Buffer.from(bytes.subarray(48, 84)).toString('latin1'), b.repository);
  assert.equal(Buffer.from(bytes.subarray(88, 113)).toString('latin1'), b.base);
  assert.equal(bytes[113], 0);
  assert.equal(v.getUint32(120), 40);
  assert.equal(bytes[128], 0b0000_1000); // chunk 3
  assert.equal(bytes[132], 0b1000_0000); // chunk 39
  const back = decodeDirtyBitmap(bytes);
  assert.deepEqual(back, b);
  assert.deepEqual([...Array(40).keys()].filter((i) => isDirty(back.bits, i)), [3, 39]);
  for (const at of [0, 9, 10, 12, 20, 50, 90, 121, 128, bytes.length - 1]) {
    const bad = new Uint8Array(bytes);
    bad[at]! ^= 1;
    assert.throws(() => decodeDirtyBitmap(bad), IntegrityError, `flip at ${at}`);
  }
  assert.throws(() => decodeDirtyBitmap(bytes.subarray(0, 100)), IntegrityError);
  assert.throws(() => encodeDirtyBitmap({ ...b, bits: new Uint8Array(4) }), IntegrityError);
  assert.throws(() => encodeDirtyBitmap({ ...b, chunkSize: 1000 }), IntegrityError);
  assert.throws(() => encodeDirtyBitmap({ ...b, base: undefined }), IntegrityError);
  assert.throws(() => encodeDirtyBitmap({ ...b, base: 'not-an-id' }), IntegrityError);
  // 41 chunks: a bit past the last one is refused.
  const odd = { ...b, volumeSize: 10 * MIB + 1, bits: new Uint8Array(6) };
  encodeDirtyBitmap(odd);
  odd.bits[5] = 0b10;
  assert.throws(() => encodeDirtyBitmap(odd), IntegrityError);
  // No base: allowed (a writer that started without one).
  const none = decodeDirtyBitmap(encodeDirtyBitmap({ ...b, state: 'in-use', pid: 42, repository: undefined, base: undefined }));
  assert.equal(none.base, undefined);
  assert.equal(none.state, 'in-use');
  assert.equal(none.pid, 42);
});

/** A device wrapper counting the bytes read in each chunk. */
function counting(inner: BlockDevice): { device: BlockDevice; readChunks: () => number[]; reset: () => void } {
  let seen = new Set<number>();
  const device = new Proxy(inner, {
    get(target, prop) {
      if (prop === 'read') {
        return async (buf: Uint8Array, offset: number) => {
          if (offset >= 4096 || buf.length > 4096) for (let i = Math.floor(offset / CHUNK); i * CHUNK < offset + buf.length; i++) seen.add(i);
          return target.read(buf, offset);
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { device, readChunks: () => [...seen].sort((a, b) => a - b), reset: () => (seen = new Set()) };
}

async function openRepo(dir: string): Promise<Repository> {
  const store = await FileObjectStore.open(join(dir, 'repo'), `file:${join(dir, 'repo')}`);
  return Repository.init(store, SecretBytes.copyOf(new Uint8Array(32).fill(9)), 'test-key', CHUNK);
}

async function backup(repo: Repository, vol: string) {
  const file = await FileDevice.open(vol, { readOnly: true, seekHoles: true });
  const c = counting(file);
  try {
    const r = await createBackupWithReport(repo, c.device, { sourcePath: vol, dirtyBitmap: { volumePath: vol } });
    return { ...r, readChunks: c.readChunks() };
  } finally {
    await file.close();
  }
}

async function restoreEquals(repo: Repository, id: string, vol: string, dir: string): Promise<void> {
  const target = join(dir, `restored-${id}`);
  await restoreBackup(repo, id, target);
  assert.ok(readFileSync(target).equals(readFileSync(vol)), `backup ${id} restores the volume's bytes`);
}

test('tracked writes: the next backup reads only the dirty chunks; restores are exact', async () => {
  const tmp = tempDir('brickcrypt-dirty-');
  try {
    const repo = await openRepo(tmp.dir);
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, randomBytes(8 * MIB));
    // First backup: no bitmap yet, every chunk read; afterwards a fresh bitmap based on it.
    const first = await backup(repo, vol);
    assert.equal(first.bitmap?.unused, 'no bitmap');
    assert.equal(first.bitmap?.after, 'reset');
    assert.equal(first.readChunks.length, 32);
    const fresh = (await readBitmapFile(bitmapPathFor(vol))).bitmap!;
    assert.equal(fresh.state, 'clean');
    assert.equal(fresh.base, first.manifest.id);

    // A writer (what attach does): in use while open, writes through the tracking device.
    const tracker = await DirtyTracker.start(vol);
    assert.equal(tracker.continued, true);
    assert.equal((await readBitmapFile(bitmapPathFor(vol))).bitmap!.state, 'in-use');
    const file = await FileDevice.open(vol);
    const dev = tracker.wrap(file);
    await dev.write(randomBytes(100), 5 * CHUNK + 7);
    await dev.write(randomBytes(CHUNK), 20 * CHUNK - 4096); // two chunks: 19 and 20
    await dev.writeZeroes(31 * CHUNK, 4096);
    // While it is in use a backup does not trust the bitmap: every chunk is read.
    const during = await backup(repo, vol);
    assert.match(during.bitmap!.unused!, /in use/);
    assert.equal(during.readChunks.length, 32);
    await file.flush();
    await tracker.finish();
    await file.close();

    const second = await backup(repo, vol);
    assert.equal(second.bitmap?.base, first.manifest.id);
    assert.equal(second.bitmap?.dirtyChunks, 4);
    assert.deepEqual(second.readChunks, [5, 19, 20, 31]);
    assert.equal(second.manifest.stats.dataBytes, 4 * CHUNK);
    assert.deepEqual(second.manifest.dirtyBitmap, { base: first.manifest.id, dirtyChunks: 4 });
    assert.equal(second.bitmap?.after, 'reset');
    await restoreEquals(repo, second.manifest.id, vol, tmp.dir);

    // Nothing written since: nothing read.
    const third = await backup(repo, vol);
    assert.deepEqual(third.readChunks, []);
    assert.equal(third.manifest.stats.dataBytes, 0);
    await restoreEquals(repo, third.manifest.id, vol, tmp.dir);
    repo.close();
  } finally {
    tmp.cleanup();
  }
});

test('not trusted: a crashed writer (left in use), a write outside attach, another repository', async () => {
  const tmp = tempDir('brickcrypt-dirty-');
  try {
    const repo = await openRepo(tmp.dir);
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, randomBytes(4 * MIB));
    await backup(repo, vol);

    // A writer that never finishes (its process died): the bitmap stays in use.
    const tracker = await DirtyTracker.start(vol);
    const file = await FileDevice.open(vol);
    // Written behind the tracker's back as a crash between write and mark would look: the
    // backup must still see it, because an in-use bitmap is never trusted.
    await file.write(randomBytes(4096), 9 * CHUNK);
    await file.close();
    const crashed = await backup(repo, vol);
    assert.match(crashed.bitmap!.unused!, /did not shut down cleanly/);
    assert.equal(crashed.readChunks.length, 16);
    assert.equal(crashed.bitmap!.after, 'reset');
    await restoreEquals(repo, crashed.manifest.id, vol, tmp.dir);
    void tracker;

    // A write outside attach changes the file's ctime: not trusted.
    await new Promise((r) => setTimeout(r, 20));
    const fd = openSync(vol, 'r+');
    writeSync(fd, randomBytes(10), 0, 10, 2 * CHUNK);
    closeSync(fd);
    const outside = await backup(repo, vol);
    assert.match(outside.bitmap!.unused!, /changed outside attach/);
    assert.equal(outside.readChunks.length, 16);
    await restoreEquals(repo, outside.manifest.id, vol, tmp.dir);

    // A bitmap based on another repository's backup is not used here.
    const other = await Repository.init(await FileObjectStore.open(join(tmp.dir, 'repo2'), 'file:repo2'), SecretBytes.copyOf(new Uint8Array(32).fill(3)), 'k2', CHUNK);
    const o = await backup(other, vol);
    assert.equal(o.bitmap?.unused, 'its base is in another repository');
    assert.equal(o.readChunks.length, 16);
    other.close();
    repo.close();
  } finally {
    tmp.cleanup();
  }
});

// --- end to end through attach (NBD) ---

function cliSetup(dir: string) {
  const env = { BRICKCRYPT_HOME: join(dir, 'home'), BRICKCRYPT_BACKUP_REPO: `file:${join(dir, 'repo')}` };
  const ok = (args: string[]) => {
    const r = runCli(args, { env, timeout: 120_000 });
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    return r.stdout;
  };
  ok(['key', 'init']);
  ok(['backup', 'init', '--chunk-size', '256K']);
  const create = (vol: string) =>
    JSON.parse(ok(['backup', 'create', vol, '--json']).trim().split('\n').pop()!) as {
      id: string;
      stats: { dataBytes: number };
      bitmap?: { base?: string; dirtyChunks?: number; unused?: string; after?: string };
    };
  return { env, ok, create };
}

const qemuWrite = (uri: string, pattern: number, offset: number, length: number) => run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, uri]);

test('attach: writes through NBD are recorded; after a clean detach the backup reads only their chunks, exact restore', { skip: needTools('qemu-io') }, () => {
  const tmp = tempDir('brickcrypt-dirty-nbd-');
  try {
    const { ok, create } = cliSetup(tmp.dir);
    const keyFile = join(tmp.dir, 'pass');
    writeFileSync(keyFile, 'pass');
    const plain = join(tmp.dir, 'plain.img');
    writeFileSync(plain, randomBytes(6 * MIB));
    const vol = join(tmp.dir, 'vol.luks');
    ok(['convert', plain, vol, '--dst-format', 'luks2', '--dst-key-file', keyFile, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000']);
    const first = create(vol);
    assert.equal(first.bitmap?.after, 'reset');
    const sock = join(tmp.dir, 'vol.sock');
    const uri = ok(['attach', vol, '--key-file', keyFile, '--socket', sock, '--daemon', '--pid-file', `${sock}.p`]).split('\n')[0]!;
    // Plaintext offsets 0.5 MiB and 3 MiB + 1: container offsets 16 MiB (LUKS2 data offset) beyond.
    qemuWrite(uri, 0x55, 512 * 1024, 4096);
    qemuWrite(uri, 0x66, 3 * MIB + 1, 1000);
    assert.equal(decodeDirtyBitmap(readFileSync(bitmapPathFor(vol))).state, 'in-use');
    ok(['detach', '--socket', sock]);
    const second = create(vol);
    assert.equal(second.bitmap?.base, first.id);
    assert.equal(second.bitmap?.dirtyChunks, 2);
    assert.equal(second.stats.dataBytes, 2 * CHUNK);
    const restored = join(tmp.dir, 'restored.luks');
    ok(['backup', 'restore', second.id, restored]);
    assert.ok(readFileSync(restored).equals(readFileSync(vol)));
    // The written plaintext is in the restored volume.
    const check = join(tmp.dir, 'check.sock');
    const curi = ok(['attach', restored, '--key-file', keyFile, '--socket', check, '--daemon', '--pid-file', `${check}.p`, '--read-only']).split('\n')[0]!;
    try {
      run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x55 524288 4096', '-c', `read -P 0x66 ${3 * MIB + 1} 1000`, curi]);
    } finally {
      ok(['detach', '--socket', check]);
    }
  } finally {
    tmp.cleanup();
  }
});

test('attach killed with SIGKILL: the bitmap is discarded, the backup hashes every chunk and restores exactly', { skip: needTools('qemu-io') }, async () => {
  const tmp = tempDir('brickcrypt-dirty-kill-');
  try {
    const { env, ok, create } = cliSetup(tmp.dir);
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, randomBytes(4 * MIB));
    create(vol);
    const sock = join(tmp.dir, 'vol.sock');
    const child = spawn(process.execPath, [cliPath, 'attach', vol, '--socket', sock], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const uri = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]!);
      });
      child.once('exit', (code) => reject(new Error(`attach exited ${code}`)));
    });
    qemuWrite(uri, 0x77, 3 * MIB, 8192);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    assert.equal(decodeDirtyBitmap(readFileSync(bitmapPathFor(vol))).state, 'in-use');
    const after = create(vol);
    assert.match(after.bitmap?.unused ?? '', /did not shut down cleanly/);
    assert.equal(after.stats.dataBytes, 4 * MIB);
    // That backup hashed everything, so it is the new base.
    assert.equal(after.bitmap?.after, 'reset');
    const restored = join(tmp.dir, 'restored.img');
    ok(['backup', 'restore', after.id, restored]);
    assert.ok(readFileSync(restored).equals(readFileSync(vol)));
    assert.equal(readFileSync(restored)[3 * MIB], 0x77);
    // The killed attach's stale lock was taken over (and released) by the reset.
    assert.equal(existsSync(`${vol}.lock`), false);
  } finally {
    tmp.cleanup();
  }
});
