/**
 * `brickcrypt backup` end to end on a file: repository: round trip, holes, incremental and
 * cross-volume dedup, LUKS containers restored byte-identical (cryptsetup opens them), integrity
 * failures (exit 7, no target), wrong and missing backup keys, least privilege, prune and locks,
 * and kill -9 in the middle of a backup.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { cliPath, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;

function setup() {
  const tmp = tempDir('brickcrypt-backup-');
  const env = { BRICKCRYPT_HOME: join(tmp.dir, 'home'), BRICKCRYPT_BACKUP_REPO: `file:${join(tmp.dir, 'repo')}` };
  const cli = (args: string[]) => runCli(args, { env });
  const ok = (args: string[]) => {
    const r = cli(args);
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    return r.stdout;
  };
  ok(['key', 'init']);
  return { tmp, env, cli, ok, repo: join(tmp.dir, 'repo') };
}

/** A sparse file of `size` bytes with random data at the given (offset, length) pairs. */
function sparseFile(path: string, size: number, data: Array<[number, number]>): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const [o, n] of data) writeSync(fd, randomBytes(n), 0, n, o);
  } finally {
    closeSync(fd);
  }
}

const show = (ok: (a: string[]) => string, id: string) => JSON.parse(ok(['backup', 'show', id, '--json'])) as {
  stats: { dataBytes: number; newChunks: number; reusedChunks: number; zeroChunks: number; storedBytes: number };
  holeBytes: number;
  luks?: { version: number; uuid: string };
  source: { format: string };
};

const filesUnder = (dir: string): string[] =>
  existsSync(dir) ? readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name)) : [];

test('round trip of a sparse volume: exact bytes, holes neither read, stored nor filled on restore', () => {
  const { tmp, ok, repo } = setup();
  try {
    const keyId = ok(['backup', 'init', '--chunk-size', '256K']).trim();
    assert.match(keyId, /^[0-9a-f-]{36}$/);
    const vol = join(tmp.dir, 'vol.img');
    sparseFile(vol, 16 * MIB + 12345, [[0, 300_000], [5 * MIB + 4096, 2 * MIB], [16 * MIB, 12345]]);
    const id = ok(['backup', 'create', vol, '--name', 'first']).trim();
    assert.match(id, /^\d{8}T\d{6}Z-[0-9a-f]{8}$/);
    const s = show(ok, id);
    // Only allocated blocks were read (lseek SEEK_DATA/SEEK_HOLE through the native module).
    assert.ok(s.stats.dataBytes <= statSync(vol).blocks * 512, `read ${s.stats.dataBytes} bytes of ${statSync(vol).blocks * 512} allocated`);
    assert.ok(s.holeBytes >= 16 * MIB - 2.5 * MIB, `holes ${s.holeBytes}`);
    assert.ok(s.stats.zeroChunks >= 50);
    const target = join(tmp.dir, 'restored.img');
    ok(['backup', 'restore', id, target]);
    assert.deepEqual(readFileSync(target), readFileSync(vol));
    assert.ok(statSync(target).blocks <= statSync(vol).blocks + 16, `restored ${statSync(target).blocks} blocks, source ${statSync(vol).blocks}`);
    // Chunk objects hold only the data: well under the volume size.
    const stored = filesUnder(join(repo, 'chunks')).reduce((a, f) => a + statSync(f).size, 0);
    assert.ok(stored < 3 * MIB, `stored ${stored}`);
    assert.match(ok(['backup', 'verify']), /no problems/);
    const list = JSON.parse(ok(['backup', 'list', '--json'])) as Array<{ id: string; name?: string }>;
    assert.deepEqual(list.map((b) => [b.id, b.name]), [[id, 'first']]);
    // An existing regular file is never overwritten.
    const again = runCli(['backup', 'restore', id, target], { env: { BRICKCRYPT_HOME: join(tmp.dir, 'home'), BRICKCRYPT_BACKUP_REPO: `file:${repo}` } });
    assert.equal(again.status, 5, again.stderr);
  } finally {
    tmp.cleanup();
  }
});

test('incremental: a second backup stores only the changed chunks; a copy of the volume stores nothing new', () => {
  const { tmp, ok, repo } = setup();
  try {
    ok(['backup', 'init', '--chunk-size', '1M']);
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, randomBytes(8 * MIB));
    const first = ok(['backup', 'create', vol]).trim();
    assert.equal(show(ok, first).stats.newChunks, 8);
    const fd = openSync(vol, 'r+');
    writeSync(fd, randomBytes(4096), 0, 4096, 1 * MIB + 10);
    writeSync(fd, randomBytes(100), 0, 100, 6 * MIB + 999);
    closeSync(fd);
    const second = ok(['backup', 'create', vol, '--json']).trim().split('\n').map((l) => JSON.parse(l) as { event: string; id?: string; parent?: string }).find((e) => e.event === 'done')!;
    const s2 = show(ok, second.id!);
    assert.equal(s2.stats.newChunks, 2);
    assert.equal(s2.stats.reusedChunks, 6);
    assert.equal(second.parent, first);
    assert.equal(filesUnder(join(repo, 'chunks')).length, 10);
    const copy = join(tmp.dir, 'copy.img');
    copyFileSync(vol, copy);
    const third = ok(['backup', 'create', copy]).trim();
    assert.equal(show(ok, third).stats.newChunks, 0);
    assert.equal(filesUnder(join(repo, 'chunks')).length, 10);
    for (const [id, expected] of [[third, copy]] as const) {
      const t = join(tmp.dir, `r-${id}`);
      ok(['backup', 'restore', id, t]);
      assert.deepEqual(readFileSync(t), readFileSync(expected));
    }
    // The first backup still restores the old content.
    const t1 = join(tmp.dir, 'r1');
    ok(['backup', 'restore', first, t1]);
    assert.notDeepEqual(readFileSync(t1), readFileSync(vol));
    assert.equal(readFileSync(t1).length, 8 * MIB);
  } finally {
    tmp.cleanup();
  }
});

test('an encrypted LUKS2 volume is backed up without its key and restored byte-identical; cryptsetup opens it', { skip: needTools('cryptsetup') }, () => {
  const { tmp, ok } = setup();
  try {
    ok(['backup', 'init']);
    const vol = join(tmp.dir, 'vol.luks');
    const keyFile = join(tmp.dir, 'pass');
    writeFileSync(keyFile, 'volume passphrase');
    ok(['format', vol, '--type', 'luks2', '--size', '8M', '--key-file', keyFile, '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000']);
    // Ciphertext in part of the payload (what a used volume looks like on disk).
    const fd = openSync(vol, 'r+');
    writeSync(fd, randomBytes(3 * MIB), 0, 3 * MIB, statSync(vol).size - 5 * MIB);
    closeSync(fd);
    const id = ok(['backup', 'create', vol]).trim();
    const s = show(ok, id);
    assert.equal(s.source.format, 'luks2');
    assert.equal(s.luks?.version, 2);
    assert.equal(s.luks?.uuid, run('cryptsetup', ['luksUUID', vol]).trim());
    const target = join(tmp.dir, 'restored.luks');
    ok(['backup', 'restore', id, target]);
    assert.deepEqual(readFileSync(target), readFileSync(vol));
    const opened = runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file', keyFile, target]);
    assert.equal(opened.status, 0, opened.stderr);
    assert.equal(run('cryptsetup', ['luksUUID', target]).trim(), s.luks?.uuid);
  } finally {
    tmp.cleanup();
  }
});

test('a flipped byte in any object: verify and restore exit 7, and no target is left', () => {
  const { tmp, ok, cli, repo } = setup();
  try {
    ok(['backup', 'init', '--chunk-size', '64K']);
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, Buffer.concat([randomBytes(512 * 1024), Buffer.alloc(256 * 1024, 0x5a)]));
    const id = ok(['backup', 'create', vol]).trim();
    const objects = [...filesUnder(join(repo, 'chunks')).slice(0, 3), ...filesUnder(join(repo, 'manifests'))];
    for (const file of objects) {
      const original = readFileSync(file);
      for (const at of [5, 20, Math.floor(original.length / 2), original.length - 1]) {
        const bad = Buffer.from(original);
        bad[at]! ^= 0x10;
        writeFileSync(file, bad);
        const v = cli(['backup', 'verify']);
        assert.equal(v.status, 7, `verify after flipping ${file}@${at}: ${v.stderr}`);
        assert.match(v.stderr, /INTEGRITY/);
        const target = join(tmp.dir, 'target.img');
        const r = cli(['backup', 'restore', id, target]);
        assert.equal(r.status, 7, `restore after flipping ${file}@${at}: ${r.stderr}`);
        assert.equal(existsSync(target), false);
        assert.deepEqual(readdirSync(tmp.dir).filter((n) => n.includes('restore')), []);
      }
      writeFileSync(file, original);
    }
    const config = join(repo, 'config');
    const original = readFileSync(config);
    const bad = Buffer.from(original);
    bad[original.indexOf('"chunkSize"') + 14]! ^= 0x01;
    writeFileSync(config, bad);
    assert.equal(cli(['backup', 'verify']).status, 7);
    writeFileSync(config, original);
    assert.match(ok(['backup', 'verify', id]), /no problems/);
  } finally {
    tmp.cleanup();
  }
});

test('wrong backup key: WRONG_BACKUP_KEY (exit 2); a deleted backup key: KEY_NOT_FOUND (exit 6)', () => {
  const { tmp, ok, cli } = setup();
  try {
    const keyId = ok(['backup', 'init']).trim();
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, randomBytes(MIB));
    const id = ok(['backup', 'create', vol]).trim();
    const other = ok(['key', 'create']).trim();
    const wrong = cli(['backup', 'restore', id, join(tmp.dir, 't'), '--key-id', other]);
    assert.equal(wrong.status, 2, wrong.stderr);
    assert.match(wrong.stderr, /WRONG_BACKUP_KEY/);
    writeFileSync(join(tmp.dir, 'pw'), 'a passphrase, not a backup key');
    const pass = ok(['key', 'store', '--type', 'passphrase', '--file', join(tmp.dir, 'pw')]).trim();
    const notKey = cli(['backup', 'list', '--key-id', pass]);
    assert.equal(notKey.status, 2, notKey.stderr);
    assert.match(notKey.stderr, /WRONG_BACKUP_KEY/);
    ok(['key', 'delete', keyId, '--force']);
    const missing = cli(['backup', 'list']);
    assert.equal(missing.status, 6, missing.stderr);
    assert.match(missing.stderr, /KEY_NOT_FOUND/);
    assert.equal(existsSync(join(tmp.dir, 't')), false);
  } finally {
    tmp.cleanup();
  }
});

test('least privilege: a backup service with role creator plus a read grant on the backup key backs up and restores', () => {
  const { tmp, ok, cli } = setup();
  try {
    const svc = ['--user', 'backup-svc', '--project', 'p1'];
    // The volume's own key is made by a creator that can never read it again; the backup never needs it.
    const keyFile = join(tmp.dir, 'pass');
    writeFileSync(keyFile, 'pw');
    const vol = join(tmp.dir, 'vol.luks');
    ok(['format', vol, '--type', 'luks1', '--size', '2M', '--key-file', keyFile, '--pbkdf-force-iterations', '1000']);
    const keyId = ok(['backup', 'init', ...svc, '--roles', 'creator']).trim();
    const denied = cli(['backup', 'create', vol, ...svc, '--roles', 'creator']);
    assert.equal(denied.status, 2, denied.stderr);
    assert.match(denied.stderr, /FORBIDDEN/);
    const id = ok(['backup', 'create', vol, ...svc, '--roles', 'creator,reader']).trim();
    const target = join(tmp.dir, 'restored');
    ok(['backup', 'restore', id, target, ...svc, '--roles', 'creator,reader']);
    assert.deepEqual(readFileSync(target), readFileSync(vol));
    // Another reader without a grant cannot use the key.
    const stranger = cli(['backup', 'list', '--user', 'someone', '--project', 'p1', '--roles', 'reader']);
    assert.notEqual(stranger.status, 0);
    const meta = JSON.parse(ok(['key', 'list', '--json', '--project', 'p1'])) as Array<{ id: string; consumers: Array<{ service: string }> }>;
    assert.equal(meta.find((k) => k.id === keyId)?.consumers[0]?.service, 'brickcrypt-backup');
  } finally {
    tmp.cleanup();
  }
});

test('delete and prune --keep-last: unreferenced chunks go, kept backups still restore; a live backup lock blocks prune', () => {
  const { tmp, ok, cli, repo } = setup();
  try {
    ok(['backup', 'init', '--chunk-size', '64K']);
    const vol = join(tmp.dir, 'vol.img');
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      writeFileSync(vol, randomBytes(256 * 1024));
      ids.push(ok(['backup', 'create', vol]).trim());
    }
    assert.equal(filesUnder(join(repo, 'chunks')).length, 12);
    writeFileSync(join(repo, 'locks', 'shared-live'), JSON.stringify({ kind: 'shared', operation: 'backup create', host: (await_hostname()), pid: process.pid, created: new Date().toISOString(), refreshed: new Date().toISOString() }));
    const blocked = cli(['backup', 'prune', '--keep-last', '1']);
    assert.equal(blocked.status, 5, blocked.stderr);
    assert.match(blocked.stderr, /LOCKED/);
    assert.equal(filesUnder(join(repo, 'chunks')).length, 12);
    // A lock whose process is gone (kill -9) is stale and ignored.
    writeFileSync(join(repo, 'locks', 'shared-live'), JSON.stringify({ kind: 'shared', operation: 'backup create', host: await_hostname(), pid: 999_999_999, created: new Date().toISOString(), refreshed: new Date().toISOString() }));
    const dry = JSON.parse(ok(['backup', 'prune', '--keep-last', '1', '--dry-run', '--json'])) as { deletedChunks: number; deletedBackups: string[] };
    assert.equal(dry.deletedChunks, 8);
    assert.equal(filesUnder(join(repo, 'chunks')).length, 12);
    ok(['backup', 'delete', ids[2]!]);
    const r = JSON.parse(ok(['backup', 'prune', '--keep-last', '1', '--json'])) as { deletedChunks: number; deletedBackups: string[]; keptBackups: number };
    assert.deepEqual(r.deletedBackups, [ids[0]]);
    assert.equal(r.keptBackups, 1);
    assert.equal(r.deletedChunks, 8);
    assert.equal(filesUnder(join(repo, 'chunks')).length, 4);
    assert.deepEqual(filesUnder(join(repo, 'locks')), []);
    const t = join(tmp.dir, 't');
    ok(['backup', 'restore', ids[1]!, t]);
    assert.equal(readFileSync(t).length, 256 * 1024);
    assert.match(ok(['backup', 'verify']), /no problems/);
    assert.equal(cli(['backup', 'show', ids[0]!]).status, 4);
  } finally {
    tmp.cleanup();
  }
});

function await_hostname(): string {
  return run('hostname', []).trim();
}

test('kill -9 during a backup: earlier backups restore, the next backup completes, verify passes', async () => {
  const { tmp, env, ok, repo } = setup();
  try {
    ok(['backup', 'init', '--chunk-size', '64K']);
    const vol = join(tmp.dir, 'vol.img');
    writeFileSync(vol, randomBytes(4 * MIB));
    const first = ok(['backup', 'create', vol]).trim();
    writeFileSync(vol, randomBytes(48 * MIB));
    const child = spawn(process.execPath, [cliPath, 'backup', 'create', vol], { env: { ...process.env, ...env }, stdio: 'ignore' });
    const before = filesUnder(join(repo, 'chunks')).length;
    // Wait until it has stored some chunks of the new content, then kill it mid-stream.
    const deadline = Date.now() + 60_000;
    while (filesUnder(join(repo, 'chunks')).length < before + 20 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const afterKill = filesUnder(join(repo, 'chunks')).length;
    assert.ok(afterKill > before && afterKill < before + 768, `killed with ${afterKill - before} new chunks`);
    const list = JSON.parse(ok(['backup', 'list', '--json'])) as Array<{ id: string }>;
    assert.deepEqual(list.map((b) => b.id), [first]);
    const t = join(tmp.dir, 'first');
    ok(['backup', 'restore', first, t]);
    assert.equal(readFileSync(t).length, 4 * MIB);
    const second = ok(['backup', 'create', vol]).trim();
    const s = show(ok, second);
    assert.ok(s.stats.reusedChunks >= 20, `the killed run's chunks are reused: ${s.stats.reusedChunks}`);
    const t2 = join(tmp.dir, 'second');
    ok(['backup', 'restore', second, t2]);
    assert.deepEqual(readFileSync(t2), readFileSync(vol));
    assert.match(ok(['backup', 'verify']), /no problems/);
  } finally {
    tmp.cleanup();
  }
});
