/**
 * The parallel data path of backup and restore (sealing workers, O_DIRECT chunk files, O_DIRECT
 * restore writes): exact bytes for sizes that are not multiples of 4096 or of the chunk size, holes
 * left as holes, compressible chunks, and the integrity rules without the id recomputation: a chunk
 * object moved under another chunk's name, or a flipped byte, fails restore with IntegrityError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, ftruncateSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { IntegrityError } from '../../src/errors.js';
import { SecretBytes } from '../../src/secret.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { FileObjectStore } from '../../src/backup/stores/file-store.js';
import { Repository, chunkObjectName } from '../../src/backup/repository.js';
import { createBackup } from '../../src/backup/create-backup.js';
import { restoreBackup } from '../../src/backup/restore-backup.js';
import { tempDir } from '../helpers/tools.js';

const KIB = 1024;
const CHUNK = 64 * KIB;

async function setup(dir: string): Promise<Repository> {
  const store = await FileObjectStore.open(join(dir, 'repo'));
  return Repository.init(store, SecretBytes.copyOf(new Uint8Array(32).fill(5)), 'k', CHUNK);
}

async function backupOf(repo: Repository, path: string) {
  const dev = await FileDevice.open(path, { readOnly: true, seekHoles: true });
  try {
    return await createBackup(repo, dev, { sourcePath: path });
  } finally {
    await dev.close();
  }
}

test('odd sizes, holes, compressible and random chunks restore exactly; holes stay holes', async () => {
  const tmp = tempDir('brickcrypt-datapath-');
  try {
    const repo = await setup(tmp.dir);
    const vol = join(tmp.dir, 'vol.img');
    const size = 40 * CHUNK + 12345;
    const fd = openSync(vol, 'w');
    ftruncateSync(fd, size);
    writeSync(fd, randomBytes(3 * CHUNK + 100), 0, 3 * CHUNK + 100, 0);
    writeSync(fd, Buffer.alloc(5 * CHUNK, 'compressible text '), 0, 5 * CHUNK, 10 * CHUNK + 4096);
    writeSync(fd, randomBytes(12345 + CHUNK), 0, 12345 + CHUNK, 39 * CHUNK);
    closeSync(fd);
    const m = await backupOf(repo, vol);
    assert.ok(m.stats.storedBytes < m.stats.newBytes, 'the text chunks were compressed');
    for (const checkIds of [false, true]) {
      const target = join(tmp.dir, `restored-${checkIds}`);
      const r = await restoreBackup(repo, m.id, target, { checkIds });
      assert.equal(r.size, size);
      assert.ok(readFileSync(target).equals(readFileSync(vol)));
      assert.ok(statSync(target).blocks <= statSync(vol).blocks + 32, `restored ${statSync(target).blocks} blocks, source ${statSync(vol).blocks}`);
    }
    repo.close();
  } finally {
    tmp.cleanup();
  }
});

test('a chunk object under another chunk\'s name, or with a flipped byte, fails restore; no target is left', async () => {
  const tmp = tempDir('brickcrypt-datapath-');
  try {
    const repo = await setup(tmp.dir);
    const vol = join(tmp.dir, 'vol.img');
    const fd = openSync(vol, 'w');
    writeSync(fd, randomBytes(4 * CHUNK));
    closeSync(fd);
    const m = await backupOf(repo, vol);
    const [a, b] = [m.chunks[0]!, m.chunks[1]!];
    const root = join(tmp.dir, 'repo');
    const pathOf = (id: string) => join(root, ...chunkObjectName(id).split('/'));
    const saved = readFileSync(pathOf(a));
    copyFileSync(pathOf(b), pathOf(a));
    for (const checkIds of [false, true]) {
      await assert.rejects(restoreBackup(repo, m.id, join(tmp.dir, `t-${checkIds}`), { checkIds }), IntegrityError);
    }
    const flipped = Buffer.from(saved);
    flipped[100]! ^= 1;
    const h = openSync(pathOf(a), 'w');
    writeSync(h, flipped);
    closeSync(h);
    await assert.rejects(restoreBackup(repo, m.id, join(tmp.dir, 't')), IntegrityError);
    assert.deepEqual(readdirSync(tmp.dir).filter((n) => n.startsWith('t') || n.startsWith('.t')), []);
    repo.close();
  } finally {
    tmp.cleanup();
  }
});
