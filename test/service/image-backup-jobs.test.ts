/**
 * The image-service and backup jobs of the HTTP API in process, against the real servers:
 * Glance (scripts/servers/glance.sh) for `upload_to_image` and `source.image_id`, and backup
 * repositories on file: and on Swift (scripts/servers/object-store.sh) for `backup` and
 * `source.backup_id`. Every round trip is checked against the bytes: the image file Glance
 * stored, the plaintext of the volume made from it, the plaintext of the restored volume.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createService, type Service } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { glanceAs, glanceServer, type GlanceTestServer } from '../helpers/glance.js';
import { objectStoreServer } from '../helpers/object-store-server.js';
import { FAST_LUKS, client, initRepository, setupState, volumePlaintext, waitJob, type Call } from './service-helpers.js';

let env: ReturnType<typeof setupState>;
// Known before the tests are declared, so a missing server skips them (and fails under CI).
const glance: GlanceTestServer | { skip: string } = await glanceServer();
let service: Service | undefined;
let call: Call;
let image: string;
let imageBytes: Buffer;

before(async () => {
  env = setupState();
  if ('skip' in glance) return;
  service = await createService({
    stateDir: env.state,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: false },
    checkpointBytes: 1 << 20,
    imageDirs: [env.dir],
    imageServiceUrl: glance.url,
    backupRepo: `file:${join(env.dir, 'repo')}`,
  });
  await initRepository(service.keys, `file:${join(env.dir, 'repo')}`);
  await service.start();
  call = client(await service.app.listen({ host: '127.0.0.1', port: 0 }));
  image = join(env.dir, 'image.raw');
  imageBytes = randomBytes(3 << 20);
  writeFileSync(image, imageBytes);
});

after(async () => {
  await service?.close();
  env?.cleanup();
});

const skip = () => (glance && 'skip' in glance ? glance.skip : false);

const volumeBytes = (id: string): Promise<Buffer> => volumePlaintext(service!.db.volume(id)!, service!.keys);

async function createVolume(body: Record<string, unknown>, who: 'admin' | 'creator' | 'other' = 'admin'): Promise<any> {
  const r = await call('POST', '/v1/volumes', { who, body });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(call, r.json.job.id, who);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  return { volume: (await call('GET', `/v1/volumes/${r.json.volume.id}`, { who })).json.volume, job };
}

async function action(id: string, body: Record<string, unknown>, who: 'admin' | 'creator' | 'other' = 'admin'): Promise<any> {
  const r = await call('POST', `/v1/volumes/${id}/actions`, { who, body });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.json.volume.status, 'maintenance');
  return waitJob(call, r.json.job.id, who);
}

test('upload_to_image as-is: Glance holds the LUKS container byte for byte with a clone of its key; source.image_id brings it back', { skip: skip() }, async () => {
  const g = glance as GlanceTestServer;
  const { volume } = await createVolume({ name: 'up', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
  const job = await action(volume.id, { upload_to_image: { image_name: 'service-as-is' } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const r = job.result;
  assert.equal(r.mode, 'as-is');
  assert.deepEqual(readFileSync(join(g.store, r.image_id)), readFileSync(volume.path), 'the image file is the volume file');
  const shown = await glanceAs(g.url, 'p1', 'alice', ['admin']).show(r.image_id);
  assert.equal(shown.properties.os_encrypt_format, 'LUKSv2');
  assert.equal(shown.properties.cinder_encryption_key_id, r.image_key_id);
  assert.equal(shown.properties.brickcrypt_job_id, job.id);
  assert.notEqual(r.image_key_id, volume.encryption_key_id, 'the image owns a clone of the key');
  assert.equal((await call('GET', `/v1/volumes/${volume.id}`, { who: 'admin' })).json.volume.status, 'available');

  // Back again, as the creator (no key bytes are read on either way of an as-is copy).
  const back = await createVolume({ name: 'from-image', format: 'luks2', source: { image_id: r.image_id } }, 'creator');
  assert.equal(back.job.result.mode, 'as-is');
  assert.equal(back.volume.size, imageBytes.length);
  assert.notEqual(back.volume.encryption_key_id, r.image_key_id, 'the volume owns another clone');
  assert.deepEqual(await volumeBytes(back.volume.id), imageBytes);
  await glanceAs(g.url, 'p1', 'alice', ['admin']).delete(r.image_id);
});

test('upload_to_image decrypted as qcow2, and a raw volume from that image: the plaintext survives; a creator may not decrypt', { skip: skip() }, async () => {
  const g = glance as GlanceTestServer;
  const { volume } = await createVolume({ name: 'dec', format: 'luks1', source: { image_file: image }, luks: { pbkdf_iterations: 1000 } });
  const denied = await action(volume.id, { upload_to_image: { mode: 'decrypted' } }, 'creator');
  assert.equal(denied.state, 'failed');
  assert.equal(denied.error.code, 'FORBIDDEN');
  assert.equal((await glanceAs(g.url, 'p1', 'alice', ['admin']).list({ filters: { brickcrypt_job_id: denied.id } })).length, 0, 'no image is left by a refused upload');
  const job = await action(volume.id, { upload_to_image: { mode: 'decrypted', disk_format: 'qcow2', image_name: 'service-qcow2', properties: { purpose: 'test' } } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.disk_format, 'qcow2');
  const stored = readFileSync(join(g.store, job.result.image_id));
  assert.equal(stored.subarray(0, 4).toString('latin1'), 'QFI\xfb');
  const plaintext = await volumeBytes(volume.id);
  assert.deepEqual(plaintext, imageBytes);
  const back = await createVolume({ name: 'plain', format: 'raw', source: { image_id: job.result.image_id } });
  assert.equal(back.job.result.mode, 'convert');
  assert.deepEqual(await volumeBytes(back.volume.id), plaintext);
  // And into a new LUKS volume with a new managed key.
  const enc = await createVolume({ name: 'enc', format: 'luks2', source: { image_id: job.result.image_id }, luks: FAST_LUKS });
  assert.ok(enc.volume.encryption_key_id);
  assert.deepEqual(await volumeBytes(enc.volume.id), plaintext);
  await glanceAs(g.url, 'p1', 'alice', ['admin']).delete(job.result.image_id);
});

test('upload_to_image refusals: bad fields 400, disk_format with as-is 400, a busy volume 409, reserved properties 400', { skip: skip() }, async () => {
  const { volume } = await createVolume({ name: 'ref', format: 'raw', size: 65536 });
  const bad = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { upload_to_image: { nope: 1 } } });
  assert.equal(bad.status, 400, bad.text);
  const asIs = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { upload_to_image: { disk_format: 'qcow2' } } });
  assert.equal(asIs.status, 400, asIs.text);
  const reserved = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { upload_to_image: { properties: { brickcrypt_job_id: 'x' } } } });
  assert.equal(reserved.status, 400, reserved.text);
  const missing = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'x', format: 'raw', source: { image_id: '00000000-0000-0000-0000-000000000000' } } });
  assert.equal(missing.status, 404, missing.text);
});

test('backup of a LUKS volume into a file: repository, restored as a new volume with exactly its bytes; isolation and format checks', { skip: skip() }, async () => {
  const { volume } = await createVolume({ name: 'bk', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
  const job = await action(volume.id, { backup: { name: 'nightly' } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const b = job.result;
  assert.match(b.backup_id, /^\d{8}T\d{6}Z-[0-9a-f]{8}$/);
  assert.equal(b.format, 'luks2');
  assert.ok(b.key_id && b.key_id !== volume.encryption_key_id, 'the backup owns a clone of the key');
  // A second backup stores no new chunk (incremental).
  const again = await action(volume.id, { backup: {} });
  assert.equal(again.result.stats.newChunks, 0, JSON.stringify(again.result.stats));

  // The original goes, key and all; the backup still restores (its key is its own clone).
  const del = await call('DELETE', `/v1/volumes/${volume.id}`, { who: 'admin' });
  assert.equal(del.status, 204, del.text);
  // A creator never reads key bytes, and the backup key must be read to open the repository.
  const denied = await call('POST', '/v1/volumes', { who: 'creator', body: { name: 'r', format: 'luks2', source: { backup_id: b.backup_id } } });
  assert.equal((await waitJob(call, denied.json.job.id, 'creator')).error.code, 'FORBIDDEN');
  const restored = await createVolume({ name: 'restored', format: 'luks2', source: { backup_id: b.backup_id } });
  assert.equal(restored.volume.size, imageBytes.length);
  assert.deepEqual(await volumeBytes(restored.volume.id), imageBytes);

  const wrongFormat = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'w', format: 'luks1', source: { backup_id: b.backup_id } } });
  assert.equal(wrongFormat.status, 400, wrongFormat.text);
  const foreign = await call('POST', '/v1/volumes', { who: 'other', body: { name: 'f', format: 'luks2', source: { backup_id: b.backup_id } } });
  assert.equal(foreign.status, 404, foreign.text);
  const unknown = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'u', format: 'raw', source: { backup_id: '20260101T000000Z-00000000' } } });
  assert.equal(unknown.status, 404, unknown.text);
});

test('backup into Swift and restore from it (a raw volume)', { skip: skip() || (typeof objectStoreServer() === 'string' ? (objectStoreServer() as string) : false) }, async () => {
  const os = objectStoreServer() as Exclude<ReturnType<typeof objectStoreServer>, string>;
  const container = `svc-${process.pid}-${Date.now()}`;
  const uri = os.swiftUri(container);
  const storeEnv = { ...process.env, ...os.env };
  const swiftEnv = setupState();
  const svc = await createService({
    stateDir: swiftEnv.state,
    identity: { tokens: loadTokensFile(swiftEnv.tokensFile), trustProxyIdentity: false },
    imageDirs: [env.dir],
    backupRepo: uri,
  });
  // The store adapters read their credentials from the environment of the service.
  const saved = { ...process.env };
  Object.assign(process.env, os.env);
  try {
    await initRepository(svc.keys, uri, storeEnv);
    await svc.start();
    const c = client(await svc.app.listen({ host: '127.0.0.1', port: 0 }));
    const created = await c('POST', '/v1/volumes', { who: 'admin', body: { name: 'sw', format: 'raw', source: { image_file: image } } });
    assert.equal((await waitJob(c, created.json.job.id)).state, 'succeeded');
    const bk = await c('POST', `/v1/volumes/${created.json.volume.id}/actions`, { who: 'admin', body: { backup: {} } });
    const job = await waitJob(c, bk.json.job.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.equal(job.result.key_id, null);
    const rs = await c('POST', '/v1/volumes', { who: 'admin', body: { name: 'sw-restored', format: 'raw', source: { backup_id: job.result.backup_id } } });
    assert.equal(rs.status, 202, rs.text);
    assert.equal((await waitJob(c, rs.json.job.id)).state, 'succeeded');
    assert.deepEqual(readFileSync(svc.db.volume(rs.json.volume.id)!.path), imageBytes);
  } finally {
    for (const k of Object.keys(os.env)) if (saved[k] === undefined) delete process.env[k];
    Object.assign(process.env, saved);
    await svc.close();
    swiftEnv.cleanup();
  }
});

test('the OpenAPI document describes the upload_to_image and backup actions', { skip: skip() }, async () => {
  const r = await call('GET', '/openapi.json');
  const actions = r.json.paths['/v1/volumes/{id}/actions'].post.requestBody.content['application/json'].schema.properties;
  assert.deepEqual(Object.keys(actions.upload_to_image.properties).sort(), ['disk_format', 'image_name', 'import_method', 'mode', 'properties', 'sign', 'visibility']);
  assert.deepEqual(Object.keys(actions.backup.properties), ['name']);
});
