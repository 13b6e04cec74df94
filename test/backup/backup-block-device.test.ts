/**
 * `backup restore` into an existing block device (a loop device; needs root and losetup): exact
 * bytes over old content, a too-small device refused, and a damaged backup leaves the device as it was.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needRoot, needTools, run, runCli, runStatus, tempDir } from '../helpers/tools.js';

const MIB = 1024 * 1024;
const skip = needTools('losetup') || needRoot('loop devices');
const tmp = tempDir('brickcrypt-backup-loop-');
const loops: string[] = [];
after(() => {
  for (const loop of loops) runStatus('losetup', ['-d', loop]);
  tmp.cleanup();
});

function loopDevice(name: string, bytes: number, content?: Buffer): { loop: string; backing: string } {
  const backing = join(tmp.dir, name);
  writeFileSync(backing, content ?? '');
  truncateSync(backing, bytes);
  const loop = run('losetup', ['--find', '--show', backing]).trim();
  loops.push(loop);
  return { loop, backing };
}

test('restore into a loop device: exact bytes, too small refused, a damaged backup writes nothing', { skip }, () => {
  const env = { BRICKCRYPT_HOME: join(tmp.dir, 'home'), BRICKCRYPT_BACKUP_REPO: `file:${join(tmp.dir, 'repo')}` };
  const ok = (args: string[]) => {
    const r = runCli(args, { env });
    assert.equal(r.status, 0, `brickcrypt ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    return r.stdout;
  };
  ok(['key', 'init']);
  ok(['backup', 'init', '--chunk-size', '256K']);
  const vol = join(tmp.dir, 'vol.img');
  writeFileSync(vol, Buffer.concat([randomBytes(2 * MIB), Buffer.alloc(MIB), randomBytes(MIB)]));
  const id = ok(['backup', 'create', vol]).trim();

  const old = randomBytes(6 * MIB);
  const { loop, backing } = loopDevice('dev.img', 6 * MIB, old);
  ok(['backup', 'restore', id, loop]);
  runStatus('sync', []);
  const after = readFileSync(backing);
  assert.deepEqual(after.subarray(0, 4 * MIB), readFileSync(vol));
  assert.deepEqual(after.subarray(4 * MIB), old.subarray(4 * MIB));

  const small = loopDevice('small.img', 2 * MIB);
  const tooSmall = runCli(['backup', 'restore', id, small.loop], { env });
  assert.equal(tooSmall.status, 4, tooSmall.stderr);
  assert.match(tooSmall.stderr, /INSUFFICIENT_SPACE/);

  // Damage the last chunk object: the verify pass fails before the first write.
  const chunks = join(tmp.dir, 'repo', 'chunks');
  const files = readdirSync(chunks, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
  const victim = files[files.length - 1]!;
  const bytes = readFileSync(victim);
  bytes[bytes.length - 1]! ^= 1;
  writeFileSync(victim, bytes);
  const fresh = randomBytes(6 * MIB);
  const second = loopDevice('dev2.img', 6 * MIB, fresh);
  const r = runCli(['backup', 'restore', id, second.loop], { env });
  assert.equal(r.status, 7, r.stderr);
  runStatus('sync', []);
  assert.deepEqual(readFileSync(second.backing), fresh);
});
