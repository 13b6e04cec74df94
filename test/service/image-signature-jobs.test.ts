/**
 * Image signatures and glance-direct through the HTTP API, against the real Glance
 * (scripts/servers/glance.sh): `upload_to_image` with `sign` (a private key and certificate in
 * the service's key manager) and `import_method: "glance-direct"` (stage + import); openssl
 * verifies the signature Glance holds; `POST /v1/volumes` with `source.require_signature`
 * takes a signed image, refuses an unsigned one before anything exists (422 INTEGRITY), and a
 * tampered image file fails its job with INTEGRITY, no volume file and the volume in `error`.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, randomBytes } from 'node:crypto';
import { existsSync, openSync, readFileSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { createService, type Service } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { SecretBytes } from '../../src/secret.js';
import { partialPath } from '../../src/workflows/convert.js';
import { glanceAs, glanceServer, type GlanceTestServer } from '../helpers/glance.js';
import { needTools, run } from '../helpers/tools.js';
import { ADMIN, FAST_LUKS, client, setupState, volumePlaintext, waitJob, type Call, type Who } from './service-helpers.js';

const glance: GlanceTestServer | { skip: string } = await glanceServer();
const skip = 'skip' in glance ? glance.skip : needTools('openssl');
const g = glance as GlanceTestServer;

let env: ReturnType<typeof setupState>;
let service: Service;
let call: Call;
let imageFile: string;
let imageBytes: Buffer;
let privateKeyId: string;
let certificateId: string;
const images: string[] = [];

before(async () => {
  env = setupState();
  if (skip) return;
  service = await createService({
    stateDir: env.state,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: false },
    imageDirs: [env.dir],
    imageServiceUrl: g.url,
  });
  await service.start();
  call = client(await service.app.listen({ host: '127.0.0.1', port: 0 }));
  imageFile = join(env.dir, 'image.raw');
  imageBytes = randomBytes(3 << 20);
  writeFileSync(imageFile, imageBytes);
  // The signer: an RSA key and a self-signed certificate, both in the service's key manager.
  const key = join(env.dir, 'signer.key');
  const pem = join(env.dir, 'signer.pem');
  run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', '/CN=signer', '-keyout', key, '-out', pem]);
  const pkcs8 = createPrivateKey(readFileSync(key)).export({ type: 'pkcs8', format: 'der' });
  privateKeyId = await service.keys.store(ADMIN, { type: 'private', secret: SecretBytes.copyOf(pkcs8) });
  const der = Buffer.from(readFileSync(pem, 'latin1').replace(/-----[^-]+-----|\s+/g, ''), 'base64');
  certificateId = await service.keys.store(ADMIN, { type: 'certificate', secret: SecretBytes.copyOf(der) });
  writeFileSync(join(env.dir, 'signer.pub'), run('openssl', ['x509', '-pubkey', '-noout', '-in', pem]));
});

after(async () => {
  for (const id of images) await glanceAs(g.url, 'p1', 'alice', ['admin']).delete(id).catch(() => undefined);
  await service?.close();
  env?.cleanup();
});

async function createVolume(body: Record<string, unknown>, who: Who = 'admin'): Promise<{ volume: any; job: any }> {
  const r = await call('POST', '/v1/volumes', { who, body });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(call, r.json.job.id, who);
  return { volume: (await call('GET', `/v1/volumes/${r.json.volume.id}`, { who })).json.volume, job };
}

async function upload(volumeId: string, params: Record<string, unknown>, who: Who = 'admin'): Promise<any> {
  const r = await call('POST', `/v1/volumes/${volumeId}/actions`, { who, body: { upload_to_image: params } });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(call, r.json.job.id, who);
  if (job.result?.image_id) images.push(job.result.image_id);
  return job;
}

let signedImage: string;
let plainVolume: any;

test('upload_to_image with sign and glance-direct: a signed plaintext image that openssl verifies', { skip }, async () => {
  const { volume, job: made } = await createVolume({ name: 'src', format: 'luks2', source: { image_file: imageFile }, luks: FAST_LUKS });
  assert.equal(made.state, 'succeeded', JSON.stringify(made));
  plainVolume = volume;
  const job = await upload(volume.id, {
    image_name: 'signed-plain',
    mode: 'decrypted',
    import_method: 'glance-direct',
    sign: { private_key_id: privateKeyId, certificate_id: certificateId, hash_method: 'SHA-384', key_type: 'RSA-PSS' },
  });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.import_method, 'glance-direct');
  assert.deepEqual(job.result.signature, { hash_method: 'SHA-384', key_type: 'RSA-PSS', certificate_id: certificateId });
  signedImage = job.result.image_id;
  const shown = await glanceAs(g.url, 'p1', 'alice', ['admin']).show(signedImage);
  assert.equal(shown.status, 'active');
  assert.equal(shown.properties.img_signature_hash_method, 'SHA-384');
  assert.equal(shown.properties.img_signature_certificate_uuid, certificateId);
  const stored = join(g.store, signedImage);
  assert.deepEqual(readFileSync(stored), imageBytes, 'the plaintext went through stage + import');
  writeFileSync(join(env.dir, 'sig.bin'), Buffer.from(shown.properties.img_signature!, 'base64'));
  const out = run('openssl', ['dgst', '-sha384', '-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:-2', '-verify', join(env.dir, 'signer.pub'), '-signature', join(env.dir, 'sig.bin'), stored]);
  assert.match(out, /Verified OK/);
});

test('a creator may not sign (the private key is read as the caller): FORBIDDEN and no image left', { skip }, async () => {
  const job = await upload(plainVolume.id, { mode: 'as-is', sign: { private_key_id: privateKeyId } }, 'creator');
  assert.equal(job.state, 'failed');
  assert.equal(job.error.code, 'FORBIDDEN', JSON.stringify(job.error));
  assert.equal((await glanceAs(g.url, 'p1', 'alice', ['admin']).list({ filters: { brickcrypt_job_id: job.id } })).length, 0);
  assert.equal((await call('GET', `/v1/volumes/${plainVolume.id}`, { who: 'admin' })).json.volume.status, 'available');
});

test('source.require_signature: a signed image becomes a verified volume; an unsigned one is refused before anything exists', { skip }, async () => {
  const { volume, job } = await createVolume({ name: 'verified', format: 'luks2', source: { image_id: signedImage, require_signature: true }, luks: FAST_LUKS });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.signature_verified, true);
  assert.deepEqual(await volumePlaintext(volume, service.keys), imageBytes);

  const unsigned = await upload(plainVolume.id, { mode: 'decrypted', image_name: 'unsigned' });
  assert.equal(unsigned.state, 'succeeded', JSON.stringify(unsigned));
  const before = (await call('GET', '/v1/volumes', { who: 'admin' })).json.volumes.length;
  const refused = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'no', format: 'raw', source: { image_id: unsigned.result.image_id, require_signature: true } } });
  assert.equal(refused.status, 422, refused.text);
  assert.equal(refused.json.error.code, 'INTEGRITY');
  assert.match(refused.json.error.message, /img_signature/);
  assert.equal((await call('GET', '/v1/volumes', { who: 'admin' })).json.volumes.length, before, 'no volume row');
  // Without require_signature the same unsigned image is accepted.
  const plain = await createVolume({ name: 'unsigned-ok', format: 'raw', source: { image_id: unsigned.result.image_id, require_signature: false } });
  assert.equal(plain.job.state, 'succeeded', JSON.stringify(plain.job));
});

test('a tampered signed image fails the job with INTEGRITY: no volume file, the volume in error', { skip }, async () => {
  const job0 = await upload(plainVolume.id, { mode: 'decrypted', image_name: 'to-tamper', sign: { private_key_id: privateKeyId, certificate_id: certificateId } });
  assert.equal(job0.state, 'succeeded', JSON.stringify(job0));
  const stored = join(g.store, job0.result.image_id);
  const fd = openSync(stored, 'r+');
  writeSync(fd, Buffer.from('tampered'), 0, 8, 1 << 20);
  closeSync(fd);
  for (const format of ['raw', 'luks2'] as const) {
    const { volume, job } = await createVolume({ name: `tampered-${format}`, format, source: { image_id: job0.result.image_id, require_signature: true }, ...(format === 'luks2' ? { luks: FAST_LUKS } : {}) });
    assert.equal(job.state, 'failed', JSON.stringify(job));
    assert.equal(job.error.code, 'INTEGRITY', JSON.stringify(job.error));
    assert.match(job.error.message, /signature/);
    assert.equal(volume.status, 'error');
    assert.equal(existsSync(volume.path), false, 'no volume file');
    assert.equal(existsSync(partialPath(volume.path)), false, 'no partial file');
  }
});

test('schema: unknown fields in sign and source, other import methods, require_signature without image_id, two sources: 400; /openapi.json shows the fields', { skip }, async () => {
  const id = plainVolume.id;
  for (const body of [
    { upload_to_image: { sign: { private_key_id: privateKeyId, nope: 1 } } },
    { upload_to_image: { sign: { certificate_id: certificateId } } },
    { upload_to_image: { sign: { private_key_id: privateKeyId, hash_method: 'MD5' } } },
    { upload_to_image: { import_method: 'web-download' } },
  ]) {
    const r = await call('POST', `/v1/volumes/${id}/actions`, { who: 'admin', body });
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
    assert.equal(r.json.error.code, 'INVALID_ARGUMENT');
  }
  for (const source of [
    { image_file: imageFile, require_signature: true },
    { image_id: signedImage, backup_id: 'x' },
    { image_id: signedImage, verify: true },
    { require_signature: true },
  ]) {
    const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'bad', format: 'raw', source } });
    assert.equal(r.status, 400, `${JSON.stringify(source)}: ${r.text}`);
  }
  // The library call (no HTTP schema in front) refuses the same.
  for (const params of [{ sign: { private_key_id: privateKeyId, hash_method: 'toString' } }, { sign: { private_key_id: privateKeyId, extra: 1 } }, { sign: {} }, { import_method: 'copy-image' }]) {
    await assert.rejects(service.volumes.action(ADMIN, id, { upload_to_image: params }), { code: 'INVALID_ARGUMENT' }, JSON.stringify(params));
  }
  await assert.rejects(service.volumes.create(ADMIN, { name: 'x', format: 'raw', source: { image_file: imageFile, require_signature: true } }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(service.volumes.create(ADMIN, { name: 'x', format: 'raw', source: { image_id: signedImage, backup_id: 'b' } }), { code: 'INVALID_ARGUMENT' });
  const doc = (await call('GET', '/openapi.json')).json;
  const actions = doc.paths['/v1/volumes/{id}/actions'].post.requestBody.content['application/json'].schema.properties.upload_to_image.properties;
  assert.deepEqual(actions.import_method.enum, ['glance-direct']);
  assert.deepEqual(actions.sign.required, ['private_key_id']);
  assert.equal(actions.sign.additionalProperties, false);
  const source = doc.paths['/v1/volumes'].post.requestBody.content['application/json'].schema.properties.source;
  assert.equal(source.properties.require_signature.type, 'boolean');
});
