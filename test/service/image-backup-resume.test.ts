/**
 * kill -9 of a real `brickcrypt serve` in the middle of each image-service and backup job, then
 * a restart: the job runs again from the start (these workflows cannot continue a stream
 * mid-way) and ends with exactly the right bytes, leaving nothing of the killed run behind —
 * no second image in Glance, no duplicate backup, no partial volume file.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { glanceAs, glanceServer, type GlanceTestServer } from '../helpers/glance.js';
import { openKeyManager } from '../../src/keys/open-key-manager.js';
import { StateDb } from '../../src/service/state-db.js';
import { initRepository, setupState, startServeProcess, stopProcess, waitFor, waitJob, type Call, type ServeProcess } from './service-helpers.js';

const env = setupState();
const repoDir = join(env.dir, 'repo');
// Known before the tests are declared, so a missing server skips them (and fails under CI).
const glance: GlanceTestServer | { skip: string } = await glanceServer();
let volumeBytes: Buffer;
let serve: ServeProcess | undefined;

const startServe = (): Promise<ServeProcess> =>
  startServeProcess(['--state', env.state, '--tokens', env.tokensFile, '--image-dir', env.dir, '--image-service', (glance as GlanceTestServer).url, '--backup-repo', `file:${repoDir}`]);
const kill9 = (child: ChildProcess): Promise<void> => stopProcess(child, 'SIGKILL');

/** Starts a job with `post`, kills the service once the job has moved bytes, restarts it and waits for the job. */
async function killMidJob(post: (call: Call) => Promise<{ status: number; json: any; text: string }>, minDone = 1): Promise<any> {
  const r = await post(serve!.call);
  assert.equal(r.status, 202, r.text);
  const id = r.json.job.id as string;
  await waitFor(serve!.call, id, (j) => j.state === 'running' && j.progress.bytes_done >= minDone, 60_000);
  await kill9(serve!.child);
  serve = await startServe();
  const job = await waitJob(serve.call, id, 'admin', 120_000);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  return job;
}

const volumePath = (id: string) => {
  const db = new StateDb(join(env.state, 'state.db'));
  try {
    return db.volume(id)!.path;
  } finally {
    db.close();
  }
};

let sourceVolume: any;

before(async () => {
  if ('skip' in glance) return;
  // The repository and its key live in the service's own keystore, as `BRICKCRYPT_HOME=STATE brickcrypt backup init` makes them.
  const { mkdirSync } = await import('node:fs');
  mkdirSync(env.state, { recursive: true, mode: 0o700 });
  const km = await openKeyManager(`local:${join(env.state, 'keystore.db')}`, { init: true });
  await initRepository(km, `file:${repoDir}`);
  await km.close();
  serve = await startServe();
  volumeBytes = randomBytes(160 << 20);
  const image = join(env.dir, 'big.raw');
  writeFileSync(image, volumeBytes);
  const r = await serve.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'big', format: 'raw', source: { image_file: image } } });
  assert.equal(r.status, 202, r.text);
  assert.equal((await waitJob(serve.call, r.json.job.id)).state, 'succeeded');
  sourceVolume = r.json.volume;
});

after(async () => {
  if (serve) await kill9(serve.child);
  env.cleanup();
});

const skip = () => (glance && 'skip' in glance ? glance.skip : false);
let imageId: string;
let backupId: string;

test('upload_to_image killed mid-stream restarts after the restart: one image, exactly the volume bytes', { skip: skip() }, async () => {
  const g = glance as GlanceTestServer;
  const job = await killMidJob((call) => call('POST', `/v1/volumes/${sourceVolume.id}/actions`, { who: 'admin', body: { upload_to_image: { image_name: 'killed-upload' } } }));
  assert.equal(job.result.runs, 2, 'the killed run was followed by a second one');
  imageId = job.result.image_id;
  const tagged = await glanceAs(g.url, 'p1', 'alice', ['admin']).list({ filters: { brickcrypt_job_id: job.id } });
  assert.deepEqual(tagged.map((i) => i.id), [imageId], 'the image of the killed run is gone');
  assert.ok(readFileSync(join(g.store, imageId)).equals(volumeBytes));
});

test('an as-is upload of a LUKS volume killed mid-stream: the rerun removes the first image and its key clone', { skip: skip() }, async () => {
  const g = glance as GlanceTestServer;
  const image = join(env.dir, 'luks-src.raw');
  writeFileSync(image, volumeBytes.subarray(0, 96 << 20));
  const r = await serve!.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'luks', format: 'luks2', source: { image_file: image }, luks: { pbkdf: 'pbkdf2', pbkdf_iterations: 1000 } } });
  assert.equal((await waitJob(serve!.call, r.json.job.id)).state, 'succeeded');
  const job = await killMidJob((call) => call('POST', `/v1/volumes/${r.json.volume.id}/actions`, { who: 'admin', body: { upload_to_image: { image_name: 'killed-luks' } } }));
  assert.equal(job.result.runs, 2);
  assert.equal(job.result.removed_images?.length, 1, JSON.stringify(job.result));
  const km = await openKeyManager(`local:${join(env.state, 'keystore.db')}`);
  try {
    const clones = (await km.list({ user: 'alice', project: 'p1', roles: ['admin'] })).filter((k) => k.name === 'image killed-luks');
    assert.deepEqual(clones.map((k) => k.id), [job.result.image_key_id], 'only the clone of the finished image is left');
  } finally {
    await km.close();
  }
  const path = volumePath(r.json.volume.id);
  assert.ok(readFileSync(join(g.store, job.result.image_id)).equals(readFileSync(path)));
  await glanceAs(g.url, 'p1', 'alice', ['admin']).delete(job.result.image_id);
});

test('a volume from image_id killed mid-download: restarted, exactly the image bytes, no partial file left', { skip: skip() }, async () => {
  assert.ok(imageId, 'needs the image of the previous test');
  const job = await killMidJob((call) => call('POST', '/v1/volumes', { who: 'admin', body: { name: 'from-image', format: 'raw', source: { image_id: imageId } } }));
  assert.equal(job.result.runs, 2);
  const path = volumePath(job.volume_id);
  assert.ok(readFileSync(path).equals(volumeBytes));
  assert.deepEqual(readdirSync(dirname(path)).filter((f) => f.includes('partial')), []);
  await glanceAs((glance as GlanceTestServer).url, 'p1', 'alice', ['admin']).delete(imageId);
});

test('backup killed mid-way: rerun after the restart, one backup, and it restores exactly', { skip: skip() }, async () => {
  const job = await killMidJob((call) => call('POST', `/v1/volumes/${sourceVolume.id}/actions`, { who: 'admin', body: { backup: { name: 'killed' } } }), 24 << 20);
  assert.equal(job.result.runs, 2);
  backupId = job.result.backup_id;
  // The rerun found the chunks the killed run had stored: fewer new chunks than chunks with data.
  assert.ok(job.result.stats.reusedChunks > 0, JSON.stringify(job.result.stats));
  const manifests = existsSync(join(repoDir, 'manifests')) ? readdirSync(join(repoDir, 'manifests')) : [];
  assert.equal(manifests.length, 1, `one backup, not two: ${manifests.join(', ')}`);
});

test('a volume from backup_id killed mid-restore: restarted, exactly the backed-up bytes, no temporary file left', { skip: skip() }, async () => {
  assert.ok(backupId, 'needs the backup of the previous test');
  const job = await killMidJob((call) => call('POST', '/v1/volumes', { who: 'admin', body: { name: 'restored', format: 'raw', source: { backup_id: backupId } } }));
  assert.equal(job.result.runs, 2);
  const path = volumePath(job.volume_id);
  assert.ok(readFileSync(path).equals(volumeBytes));
  assert.deepEqual(readdirSync(dirname(path)).filter((f) => f.includes('.restore-')), []);
});
