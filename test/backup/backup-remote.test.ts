/**
 * `brickcrypt backup` against the real test Swift (scripts/servers/object-store.sh): the same
 * repository format through the Swift API (tempauth from ST_AUTH/ST_USER/ST_KEY) and the S3 API
 * (s3api, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): round trip, incremental, a damaged object.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { openObjectStore } from '../../src/backup/object-store.js';
import { needObjectStore, objectStoreServer } from '../helpers/object-store-server.js';
import { runCli, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;
const skip = needObjectStore();

for (const kind of ['swift', 's3'] as const) {
  test(`${kind}: backup, incremental backup, restore, verify, a flipped byte, prune`, { skip }, async () => {
    const server = objectStoreServer();
    if (typeof server === 'string') throw new Error(server);
    const tmp = tempDir('brickcrypt-backup-remote-');
    const name = `b${randomBytes(6).toString('hex')}`;
    const uri = kind === 'swift' ? server.swiftUri(name) : server.s3Uri(name);
    const env = { ...server.env, BRICKCRYPT_HOME: join(tmp.dir, 'home'), BRICKCRYPT_BACKUP_REPO: uri };
    const cli = (args: string[]) => runCli(args, { env });
    const ok = (args: string[]) => {
      const r = cli(args);
      assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
      return r.stdout;
    };
    try {
      ok(['key', 'init']);
      ok(['backup', 'init', '--chunk-size', '256K']);
      const vol = join(tmp.dir, 'vol.img');
      const fd = openSync(vol, 'w');
      ftruncateSync(fd, 8 * MIB);
      writeSync(fd, randomBytes(3 * MIB), 0, 3 * MIB, MIB);
      closeSync(fd);
      const first = ok(['backup', 'create', vol]).trim();
      const fd2 = openSync(vol, 'r+');
      writeSync(fd2, randomBytes(1000), 0, 1000, 2 * MIB + 5);
      closeSync(fd2);
      const second = ok(['backup', 'create', vol]).trim();
      const s = JSON.parse(ok(['backup', 'show', second, '--json'])) as { stats: { newChunks: number; reusedChunks: number } };
      assert.equal(s.stats.newChunks, 1);
      assert.equal(s.stats.reusedChunks, 11);
      const target = join(tmp.dir, 'restored.img');
      ok(['backup', 'restore', second, target]);
      assert.deepEqual(readFileSync(target), readFileSync(vol));
      assert.match(ok(['backup', 'verify']), /no problems/);

      // Damage one stored chunk through the store's own API.
      const store = await openObjectStore(uri, { ...process.env, ...server.env });
      try {
        const [victim] = (await store.list('chunks/')).sort();
        const bytes = Buffer.from(await store.get(victim!));
        bytes[bytes.length - 3]! ^= 0x80;
        await store.put(victim!, bytes);
        const v = cli(['backup', 'verify']);
        assert.equal(v.status, 7, v.stderr);
        const t2 = join(tmp.dir, 't2');
        const r = cli(['backup', 'restore', first, t2]);
        if (r.status !== 0) {
          assert.equal(r.status, 7, r.stderr);
          assert.equal(existsSync(t2), false);
        }
        bytes[bytes.length - 3]! ^= 0x80;
        await store.put(victim!, bytes);
      } finally {
        await store.close();
      }
      const p = JSON.parse(ok(['backup', 'prune', '--keep-last', '1', '--json'])) as { deletedBackups: string[]; deletedChunks: number };
      assert.deepEqual(p.deletedBackups, [first]);
      assert.equal(p.deletedChunks, 1);
      assert.match(ok(['backup', 'verify']), /no problems/);
    } finally {
      tmp.cleanup();
    }
  });
}

test('swift: missing credentials are a usage error', { skip }, () => {
  const server = objectStoreServer();
  if (typeof server === 'string') throw new Error(server);
  const env: NodeJS.ProcessEnv = { ...process.env, BRICKCRYPT_HOME: '/nonexistent' };
  for (const k of ['ST_AUTH', 'ST_USER', 'ST_KEY', 'OS_AUTH_URL', 'OS_USERNAME', 'OS_PASSWORD', 'OS_STORAGE_URL', 'OS_AUTH_TOKEN', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) env[k] = ''; // runCli merges with process.env: blank, not delete
  for (const uri of [server.swiftUri('x'), server.s3Uri('x')]) {
    const r = runCli(['backup', 'list', '--repo', uri], { env });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /credentials are missing/);
  }
});
