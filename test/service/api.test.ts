/**
 * The HTTP API in process (createService on a temporary state directory, listening on a
 * loopback port): volumes, jobs, identity, isolation, idempotency, conflicts, the queue limit,
 * and the actions change_key, migrate, attach and detach, checked against the bytes on disk,
 * the local keystore and real tools (cryptsetup, nbdinfo) where they are installed.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes, createHash } from 'node:crypto';
import { existsSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createService, type Service } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { openVolumeFile, passphraseOfKey } from '../../src/service/volume-files.js';
import { isAuditable } from '../../src/keys/audit.js';
import { needTools, runCli, whichTool } from '../helpers/tools.js';
import { ADMIN, FAST_LUKS, TOKENS, client, setupState, volumePlaintext, waitJob, type Call } from './service-helpers.js';

const execFileP = promisify(execFile);

let env: ReturnType<typeof setupState>;
let service: Service;
let call: Call;
let base: string;
let image: string;
let imageBytes: Buffer;

before(async () => {
  env = setupState();
  service = await createService({
    stateDir: env.state,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: true },
    maxJobs: 8,
    checkpointBytes: 1 << 20,
    imageDirs: [env.dir],
  });
  await service.start();
  base = await service.app.listen({ host: '127.0.0.1', port: 0 });
  call = client(base);
  image = join(env.dir, 'image.raw');
  imageBytes = randomBytes(6 << 20);
  writeFileSync(image, imageBytes);
});

after(async () => {
  await service?.close();
  env?.cleanup();
});

const volumeBytes = (id: string): Promise<Buffer> => volumePlaintext(service.db.volume(id)!, service.keys);

async function createVolume(body: Record<string, unknown>, who: 'admin' | 'creator' | 'other' = 'admin') {
  const r = await call('POST', '/v1/volumes', { who, body });
  assert.equal(r.status, 202, r.text);
  return { volume: r.json.volume, job: await waitJob(call, r.json.job.id, who) };
}

test('health needs no token; everything else does (401), with a typed error body', async () => {
  const h = await call('GET', '/v1/health');
  assert.equal(h.status, 200);
  assert.equal(h.json.status, 'ok');
  assert.equal(h.json.state, 'sqlite');
  assert.equal(h.json.key_manager, 'local', 'the local keystore under --state by default');
  const r = await call('GET', '/v1/volumes');
  assert.equal(r.status, 401);
  assert.equal(r.json.error.code, 'UNAUTHENTICATED');
  const bad = await call('GET', '/v1/volumes', { headers: { authorization: 'Bearer not-a-token' } });
  assert.equal(bad.status, 401);
});

test('bad input is a 400 INVALID_ARGUMENT and creates nothing: unknown field, bad format, bad size, missing size', async () => {
  const before = service.db.volumes().length;
  for (const body of [
    { name: 'x', format: 'luks2', size: '8M', colour: 'blue' },
    { name: 'x', format: 'luks3', size: '8M' },
    { name: 'x', format: 'raw', size: 'eight megabytes' },
    { name: 'x', format: 'raw' },
    { name: 'x', format: 'raw', size: '8M', source: { image_file: image, image_id: 'a' } },
  ]) {
    const r = await call('POST', '/v1/volumes', { who: 'admin', body });
    assert.equal(r.status, 400, `${JSON.stringify(body)} -> ${r.text}`);
    assert.equal(r.json.error.code, 'INVALID_ARGUMENT');
    assert.equal(typeof r.json.error.message, 'string');
  }
  const missing = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'x', format: 'raw', source: { image_file: join(env.dir, 'nope.raw') } } });
  assert.equal(missing.status, 404);
  assert.equal(missing.json.error.code, 'NOT_FOUND');
  const relative = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'x', format: 'raw', source: { image_file: 'image.raw' } } });
  assert.equal(relative.status, 400);
  // Only files in the image directories: the service's host files are not a volume source.
  const outside = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'x', format: 'raw', source: { image_file: '/etc/passwd' } } });
  assert.equal(outside.status, 403, outside.text);
  assert.equal(outside.json.error.code, 'FORBIDDEN');
  assert.equal(service.db.volumes().length, before);
});

test('blank LUKS2 volume with a new managed key: the volume opens with the key the local keystore under the state dir holds', async () => {
  const { volume, job } = await createVolume({ name: 'blank', format: 'luks2', size: '8M', luks: FAST_LUKS });
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  assert.equal(job.type, 'create_volume');
  const got = (await call('GET', `/v1/volumes/${volume.id}`, { who: 'admin' })).json.volume;
  assert.equal(got.status, 'available');
  assert.equal(got.size, 8 << 20);
  assert.equal(got.format, 'luks2');
  assert.match(got.encryption_key_id, /^[0-9a-f-]{36}$/);
  assert.ok(existsSync(got.path));
  // The same keystore from the CLI: BRICKCRYPT_HOME=STATE brickcrypt key ...
  const listed = runCli(['key', 'list', '--project', 'p1', '--json'], { env: { BRICKCRYPT_HOME: env.state } });
  assert.equal(listed.status, 0, listed.stderr);
  assert.ok(listed.stdout.includes(got.encryption_key_id));
  const skip = needTools('cryptsetup');
  if (skip) return;
  const keyFile = join(env.dir, 'pass');
  const pass = await passphraseOfKey(service.keys, ADMIN, got.encryption_key_id);
  writeFileSync(keyFile, pass.expose());
  pass.wipe();
  const r = await execFileP(whichTool('cryptsetup')!, ['open', '--test-passphrase', '--key-file', keyFile, got.path]).then(() => 0, (e: { code: number }) => e.code);
  assert.equal(r, 0, 'cryptsetup opens the volume with the managed key as os-brick derives its passphrase');
});

test('from an image file: raw, LUKS1 and LUKS2 volumes hold exactly its bytes; progress reports bytes done of total', async () => {
  for (const format of ['raw', 'luks1', 'luks2']) {
    const { volume, job } = await createVolume({ name: `img-${format}`, format, source: { image_file: image }, ...(format === 'raw' ? {} : { luks: FAST_LUKS }) });
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    assert.equal(job.progress.bytes_total, imageBytes.length);
    assert.equal(job.progress.bytes_done, imageBytes.length);
    assert.equal(job.result.copied_bytes, imageBytes.length);
    assert.equal(job.result.resumed_from, 0);
    const bytes = await volumeBytes(volume.id);
    assert.equal(bytes.length, imageBytes.length);
    assert.ok(bytes.equals(imageBytes), `${format} volume content`);
  }
});

test('projects are isolated: another project sees 404 for the volume and its job, and an empty list', async () => {
  const { volume, job } = await createVolume({ name: 'iso', format: 'raw', size: 4096 });
  const v = await call('GET', `/v1/volumes/${volume.id}`, { who: 'other' });
  assert.equal(v.status, 404);
  assert.equal(v.json.error.code, 'NOT_FOUND');
  assert.equal((await call('GET', `/v1/jobs/${job.id}`, { who: 'other' })).status, 404);
  assert.equal((await call('DELETE', `/v1/volumes/${volume.id}`, { who: 'other' })).status, 404);
  assert.equal((await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'other', body: { attach: {} } })).status, 404);
  assert.ok(!(await call('GET', '/v1/volumes', { who: 'other' })).json.volumes.some((x: { id: string }) => x.id === volume.id));
});

test("Keystone X-* headers are accepted when trusted; a reader may look but not change (403)", async () => {
  const headers = { 'x-identity-status': 'Confirmed', 'x-user-name': 'alice', 'x-project-id': 'p1', 'x-roles': 'reader' };
  const r = await call('GET', '/v1/volumes', { headers });
  assert.equal(r.status, 200);
  const w = await call('POST', '/v1/volumes', { headers, body: { name: 'r', format: 'raw', size: 4096 } });
  assert.equal(w.status, 403);
  assert.equal(w.json.error.code, 'FORBIDDEN');
  const unconfirmed = await call('GET', '/v1/volumes', { headers: { ...headers, 'x-identity-status': 'Invalid' } });
  assert.equal(unconfirmed.status, 401);
});

test('a creator creates a volume and its key but can never read the key: attach fails FORBIDDEN and the denial is audited', async () => {
  const { volume, job } = await createVolume({ name: 'by-creator', format: 'luks2', size: '4M', luks: FAST_LUKS }, 'creator');
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  const r = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'creator', body: { attach: {} } });
  assert.equal(r.status, 202, r.text);
  const attach = await waitJob(call, r.json.job.id, 'creator');
  assert.equal(attach.state, 'failed');
  assert.equal(attach.error.code, 'FORBIDDEN');
  assert.equal((await call('GET', `/v1/volumes/${volume.id}`, { who: 'creator' })).json.volume.status, 'available');
  assert.ok(isAuditable(service.keys));
  const audit = await service.keys.readAudit(ADMIN);
  const keyId = service.db.volume(volume.id)!.encryption_key_id!;
  assert.ok(audit.some((e) => e.user === 'cinder' && e.operation === 'get' && e.outcome === 'denied' && JSON.stringify(e).includes(keyId)), 'denied get in the audit log');
  assert.ok(audit.some((e) => e.user === 'cinder' && e.operation === 'createKey' && e.outcome === 'allowed'));
});

test('Idempotency-Key: a repeat returns the first reply (one volume, one job); the same key for another request is refused', async () => {
  const body = { name: 'idem', format: 'raw', size: '1M' };
  const headers = { 'idempotency-key': 'create-idem-1' };
  const a = await call('POST', '/v1/volumes', { who: 'admin', body, headers });
  const b = await call('POST', '/v1/volumes', { who: 'admin', body, headers });
  assert.equal(a.status, 202);
  assert.equal(b.status, 202);
  assert.equal(b.json.volume.id, a.json.volume.id);
  assert.equal(b.json.job.id, a.json.job.id);
  assert.equal(b.headers.get('idempotent-replayed'), 'true');
  assert.equal(service.db.volumes().filter((v) => v.name === 'idem').length, 1);
  const c = await call('POST', '/v1/volumes', { who: 'admin', body: { ...body, size: '2M' }, headers });
  assert.equal(c.status, 400);
  // Keys are per project: another project's identical key is its own.
  const d = await call('POST', '/v1/volumes', { who: 'other', body, headers });
  assert.equal(d.status, 202);
  assert.notEqual(d.json.volume.id, a.json.volume.id);
  await waitJob(call, a.json.job.id);
  await waitJob(call, d.json.job.id, 'other');
});

test('without --image-service and --backup-repo, upload_to_image, backup and their sources answer 501 NOT_IMPLEMENTED', async () => {
  const { volume } = await createVolume({ name: 'n501', format: 'raw', size: 4096 });
  for (const action of ['upload_to_image', 'backup']) {
    const r = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { [action]: {} } });
    assert.equal(r.status, 501, r.text);
    assert.equal(r.json.error.code, 'NOT_IMPLEMENTED');
  }
  for (const source of [{ image_id: 'abc' }, { backup_id: 'abc' }]) {
    const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 's', format: 'raw', size: 4096, source } });
    assert.equal(r.status, 501);
  }
  const two = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { attach: {}, detach: {} } });
  assert.equal(two.status, 400);
});

test('change_key rotates the keyslot to a new managed key; the old key is gone and the data unchanged', async () => {
  const { volume } = await createVolume({ name: 'rot', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
  const oldKey = service.db.volume(volume.id)!.encryption_key_id!;
  const r = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { change_key: { luks: FAST_LUKS } } });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(call, r.json.job.id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  assert.equal(job.result.old_key_id, oldKey);
  const v = service.db.volume(volume.id)!;
  assert.equal(v.encryption_key_id, job.result.new_key_id);
  assert.notEqual(v.encryption_key_id, oldKey);
  await assert.rejects(service.keys.getMetadata(ADMIN, oldKey), { code: 'KEY_NOT_FOUND' });
  assert.ok((await volumeBytes(volume.id)).equals(imageBytes));
});

test('migrate out of place: luks2 -> raw -> luks1 keeps every byte; the old files are removed', async () => {
  const { volume } = await createVolume({ name: 'mig', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
  let path = service.db.volume(volume.id)!.path;
  for (const format of ['raw', 'luks1']) {
    const r = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { migrate: { format, ...(format === 'raw' ? {} : { luks: FAST_LUKS }) } } });
    assert.equal(r.status, 202, r.text);
    assert.equal(r.json.volume.status, 'maintenance');
    const job = await waitJob(call, r.json.job.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    const v = service.db.volume(volume.id)!;
    assert.equal(v.format, format);
    assert.equal(v.status, 'available');
    assert.ok(!existsSync(path), 'the source file is removed after the swap');
    path = v.path;
    assert.equal(v.encryption_key_id === null, format === 'raw');
    assert.ok((await volumeBytes(volume.id)).equals(imageBytes), `content after migrate to ${format}`);
  }
});

test('attach serves the volume over NBD with TLS-PSK; DELETE is refused while attached (409); detach; delete removes file and key', async () => {
  const { volume } = await createVolume({ name: 'att', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
  const r = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { attach: {} } });
  const job = await waitJob(call, r.json.job.id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  assert.match(job.result.uri, /^nbds:\/\/127\.0\.0\.1:\d+\//);
  assert.match(job.result.tls_psk_identity, /^brickcrypt-/);
  assert.match(job.result.tls_psk_key, /^[0-9a-f]{64}$/);
  const v = (await call('GET', `/v1/volumes/${volume.id}`, { who: 'admin' })).json.volume;
  assert.equal(v.status, 'in-use');
  assert.equal(v.attachment.uri, job.result.uri);
  const del = await call('DELETE', `/v1/volumes/${volume.id}`, { who: 'admin' });
  assert.equal(del.status, 409);
  assert.equal(del.json.error.code, 'IN_USE');
  if (!needTools('nbdinfo')) {
    const psk = join(env.dir, 'client.psk');
    writeFileSync(psk, `${job.result.tls_psk_identity}:${job.result.tls_psk_key}\n`, { mode: 0o600 });
    const u = new URL(job.result.uri);
    const uri = `nbds://${job.result.tls_psk_identity}@${u.host}${u.pathname}?tls-psk-file=${psk}`;
    const size = (await execFileP(whichTool('nbdinfo')!, ['--size', uri], { encoding: 'utf8' })).stdout.trim();
    assert.equal(Number(size), imageBytes.length);
    const dump = join(env.dir, 'nbd-dump.raw');
    if (!needTools('nbdcopy')) {
      await execFileP(whichTool('nbdcopy')!, [uri, dump]);
      assert.equal(createHash('sha256').update(readFileSync(dump)).digest('hex'), createHash('sha256').update(imageBytes).digest('hex'));
    }
  }
  const d = await call('POST', `/v1/volumes/${volume.id}/actions`, { who: 'admin', body: { detach: {} } });
  assert.equal((await waitJob(call, d.json.job.id)).state, 'succeeded');
  const keyId = service.db.volume(volume.id)!.encryption_key_id!;
  const path = service.db.volume(volume.id)!.path;
  const gone = await call('DELETE', `/v1/volumes/${volume.id}`, { who: 'admin' });
  assert.equal(gone.status, 204);
  assert.equal((await call('GET', `/v1/volumes/${volume.id}`, { who: 'admin' })).status, 404);
  assert.ok(!existsSync(path));
  await assert.rejects(service.keys.getMetadata(ADMIN, keyId), { code: 'KEY_NOT_FOUND' });
});

test('openapi.json describes the routes from the validation schemas; /metrics is Prometheus text', async () => {
  const doc = (await call('GET', '/openapi.json')).json;
  assert.equal(doc.openapi, '3.1.0');
  assert.ok(doc.paths['/v1/volumes'].post.requestBody.content['application/json'].schema.additionalProperties === false);
  assert.ok(doc.paths['/v1/volumes/{id}/actions'].post);
  assert.deepEqual(doc.paths['/v1/health'].get.security, []);
  const m = await call('GET', '/metrics');
  assert.equal(m.status, 200);
  assert.match(m.text, /brickcrypt_http_requests_total\{/);
  assert.match(m.text, /brickcrypt_jobs\{state="succeeded"\} \d+/);
});

test('SSE: /v1/jobs/{id}/events streams the job until its final state', async () => {
  const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'sse', format: 'raw', source: { image_file: image } } });
  const res = await fetch(`${base}/v1/jobs/${r.json.job.id}/events`, { headers: { authorization: `Bearer ${TOKENS.admin.token}` } });
  assert.equal(res.headers.get('content-type'), 'text/event-stream');
  const text = await res.text(); // the server ends the stream after the final state
  const events = text.split('\n\n').filter((f) => f.startsWith('event: job')).map((f) => JSON.parse(f.split('\ndata: ')[1]!));
  assert.ok(events.length >= 1);
  assert.equal(events.at(-1).state, 'succeeded');
  assert.equal(events.at(-1).id, r.json.job.id);
});


test('change_key resumed after its keyslot rewrite (checkpoint "add"): the new key is tested first and the rotation completes once', async () => {
  const { volume } = await createVolume({ name: 'rot-resume', format: 'luks1', size: '2M', luks: FAST_LUKS });
  const v = service.db.volume(volume.id)!;
  const { newKeyPassphrase } = await import('../../src/service/volume-files.js');
  const { FileDevice } = await import('../../src/devices/file-device.js');
  const { LuksVolume } = await import('../../src/luks/index.js');
  for (const rewritten of [true, false]) {
    const current = service.db.volume(volume.id)!;
    const created = await newKeyPassphrase(service.keys, ADMIN, 'resume-test');
    if (rewritten) {
      // The run that died had rewritten the keyslot already.
      const oldPass = await passphraseOfKey(service.keys, ADMIN, current.encryption_key_id!);
      const file = await FileDevice.open(current.path);
      await (await LuksVolume.open(file)).changeKey(oldPass, created.passphrase.clone() as typeof oldPass, { iterations: 1000 });
      await file.close();
      oldPass.wipe();
    }
    created.passphrase.wipe();
    const job = service.db.insertJob({ type: 'change_key', volume_id: v.id, caller: ADMIN, params: { luks: FAST_LUKS } });
    service.db.saveCheckpoint(job.id, { phase: 'add', new_key_id: created.id }, job.progress);
    service.runner.kick();
    const done = await waitJob(call, job.id);
    assert.equal(done.state, 'succeeded', `rewritten=${rewritten}: ${JSON.stringify(done.error)}`);
    assert.equal(done.result.new_key_id, created.id);
    assert.equal(service.db.volume(volume.id)!.encryption_key_id, created.id);
    await assert.rejects(service.keys.getMetadata(ADMIN, current.encryption_key_id!), { code: 'KEY_NOT_FOUND' });
    const pass = await passphraseOfKey(service.keys, ADMIN, created.id);
    const opened = await openVolumeFile(current.path, 'luks1', { readOnly: true, passphrase: pass });
    await opened.close();
  }
});
