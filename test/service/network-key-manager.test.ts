/**
 * The service on a network key manager (scripts/key-servers.sh): with `keyManager` a real
 * Barbican, a LUKS2 volume's key lives in Barbican (fetched here over Barbican's own REST API,
 * not through brickcrypt) and cryptsetup opens the volume with the os-brick passphrase (lowercase
 * hex of the key bytes); change_key, attach and delete reach Barbican as the caller; a creator
 * gets FORBIDDEN for a key read Barbican itself would allow. The same against PyKMIP. An
 * unreachable key manager is 503 BACKEND_UNAVAILABLE (API) and the same code in a failed job,
 * never a 500; `serve --key-manager` with a bad URI is a usage error (exit 1).
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createService, type Service } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { KmipKeyManager } from '../../src/keys/kmip/kmip-key-manager.js';
import { barbicanServer, kmipServer } from '../helpers/key-servers.js';
import { needTools, runCli, runStatus } from '../helpers/tools.js';
import { ADMIN, FAST_LUKS, TOKENS, client, freePort, setupState, volumePlaintext, waitJob, type Call, type Who } from './service-helpers.js';

const barbican = await barbicanServer();
const kmip = await kmipServer();
const cryptsetupMissing = needTools('cryptsetup');

/** What cryptsetup says of `passphrase` for the LUKS volume at `path` (exit 0 = a keyslot opens). */
const cryptsetupAccepts = (path: string, passphrase: string) => runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file=-', path], { input: passphrase }).status === 0;

/** A secret's bytes straight from Barbican's REST API, as `who` (project, user and roles headers). */
async function barbicanPayload(url: string, id: string, who: Who = 'admin'): Promise<{ status: number; bytes: Buffer }> {
  const t = TOKENS[who];
  const r = await fetch(`${url}/v1/secrets/${id}/payload`, {
    headers: { 'X-Project-Id': t.project, 'X-User-Id': t.user, 'X-Roles': t.roles.join(','), Accept: 'application/octet-stream' },
  });
  return { status: r.status, bytes: Buffer.from(await r.arrayBuffer()) };
}

async function barbicanSecret(url: string, id: string): Promise<{ status: number; json: any }> {
  const t = TOKENS.admin;
  const r = await fetch(`${url}/v1/secrets/${id}`, {
    headers: { 'X-Project-Id': t.project, 'X-User-Id': t.user, 'X-Roles': 'admin', Accept: 'application/json', 'OpenStack-API-Version': 'key-manager 1.1' },
  });
  return { status: r.status, json: r.status === 200 ? await r.json() : undefined };
}

async function startService(keyManager: string, keyManagerOptions: Record<string, unknown>, env: ReturnType<typeof setupState>, log?: (m: string) => void) {
  const service = await createService({
    stateDir: env.state,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: true },
    imageDirs: [env.dir],
    keyManager,
    keyManagerOptions,
    ...(log ? { log } : {}),
  });
  await service.start();
  const call = client(await service.app.listen({ host: '127.0.0.1', port: 0 }));
  return { service, call };
}

async function created(call: Call, body: Record<string, unknown>, who: Who = 'admin') {
  const r = await call('POST', '/v1/volumes', { who, body });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(call, r.json.job.id, who);
  assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
  return (await call('GET', `/v1/volumes/${r.json.volume.id}`, { who })).json.volume;
}

async function action(call: Call, id: string, body: Record<string, unknown>, who: Who = 'admin') {
  const r = await call('POST', `/v1/volumes/${id}/actions`, { who, body });
  assert.equal(r.status, 202, r.text);
  return waitJob(call, r.json.job.id, who);
}

describe('serve with keys in Barbican', { skip: 'skip' in barbican ? barbican.skip : cryptsetupMissing }, () => {
  const url = 'url' in barbican ? barbican.url : '';
  const env = setupState();
  const logs: string[] = [];
  let service: Service;
  let call: Call;
  let image: string;
  let imageBytes: Buffer;
  before(async () => {
    ({ service, call } = await startService(`barbican+${url}`, { attempts: 2 }, env, (m) => logs.push(m)));
    image = join(env.dir, 'image.raw');
    imageBytes = randomBytes(3 << 20);
    writeFileSync(image, imageBytes);
  });
  after(async () => {
    await service?.close();
    env.cleanup();
  });

  test('health names the key manager; no local keystore is made under --state', async () => {
    const h = await call('GET', '/v1/health');
    assert.equal(h.json.key_manager, 'barbican');
    assert.ok(!JSON.stringify(h.json).includes(url), 'no endpoint (or anything secret) in the health answer');
    assert.equal(existsSync(join(env.state, 'keystore.db')), false);
  });

  test('a LUKS2 volume: its key is a Barbican secret, and cryptsetup opens the volume with hex(key)', async () => {
    const v = await created(call, { name: 'b1', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
    const secret = await barbicanSecret(url, v.encryption_key_id);
    assert.equal(secret.status, 200, 'the key id is a Barbican secret');
    assert.equal(secret.json.secret_type, 'symmetric');
    assert.equal(secret.json.creator_id, TOKENS.admin.user, 'created as the caller');
    assert.deepEqual(secret.json.consumers.map((c: any) => c.resource_id), [v.id], 'the volume is the consumer');
    const key = await barbicanPayload(url, v.encryption_key_id);
    assert.equal(key.status, 200);
    assert.equal(key.bytes.length, 32);
    assert.ok(cryptsetupAccepts(v.path, key.bytes.toString('hex')), 'cryptsetup opens it with lowercase hex of the Barbican key');
    assert.equal(cryptsetupAccepts(v.path, key.bytes.toString('hex').toUpperCase()), false, 'the hex is lowercase, exactly');
    assert.ok((await volumePlaintext(v, service.keys)).equals(imageBytes));
  });

  test('change_key: a new Barbican secret opens the volume, the old one is deleted from Barbican', async () => {
    const v = await created(call, { name: 'b2', format: 'luks2', size: '2M', luks: FAST_LUKS });
    const old = await barbicanPayload(url, v.encryption_key_id);
    const job = await action(call, v.id, { change_key: { luks: FAST_LUKS } });
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    assert.equal(job.result.old_key_id, v.encryption_key_id);
    const fresh = await barbicanPayload(url, job.result.new_key_id);
    assert.equal(fresh.status, 200);
    assert.ok(cryptsetupAccepts(v.path, fresh.bytes.toString('hex')), 'the new key opens it');
    assert.equal(cryptsetupAccepts(v.path, old.bytes.toString('hex')), false, 'the old key no longer does');
    assert.equal((await barbicanSecret(url, v.encryption_key_id)).status, 404, 'the old secret is gone from Barbican');
  });

  test('attach reads the key from Barbican and serves the volume; detach; delete removes the secret', async () => {
    const v = await created(call, { name: 'b3', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS });
    const a = await action(call, v.id, { attach: {} });
    assert.equal(a.state, 'succeeded', JSON.stringify(a.error));
    assert.match(a.result.uri, /^nbds:\/\/127\.0\.0\.1:\d+\//);
    assert.equal((await call('GET', `/v1/volumes/${v.id}`, { who: 'admin' })).json.volume.status, 'in-use');
    const d = await action(call, v.id, { detach: {} });
    assert.equal(d.state, 'succeeded', JSON.stringify(d.error));
    assert.equal((await call('DELETE', `/v1/volumes/${v.id}`, { who: 'admin' })).status, 204);
    assert.equal((await barbicanSecret(url, v.encryption_key_id)).status, 404);
  });

  test('a creator creates a volume whose key Barbican would hand back to it, but the service never reads it for a creator', async () => {
    const v = await created(call, { name: 'b4', format: 'luks2', size: '1M', luks: FAST_LUKS }, 'creator');
    // Barbican maps creator to its member role: the creator could read its own secret there.
    const viaBarbican = await fetch(`${url}/v1/secrets/${v.encryption_key_id}/payload`, {
      headers: { 'X-Project-Id': TOKENS.creator.project, 'X-User-Id': TOKENS.creator.user, 'X-Roles': 'member', Accept: 'application/octet-stream' },
    });
    assert.equal(viaBarbican.status, 200);
    const a = await action(call, v.id, { attach: {} }, 'creator');
    assert.equal(a.state, 'failed');
    assert.equal(a.error.code, 'FORBIDDEN');
    assert.ok(logs.some((m) => m.includes(`denied key read of ${v.encryption_key_id} to ${TOKENS.creator.user}@${TOKENS.creator.project}`)), logs.join('\n'));
    // A member of the project (the admin here) can still attach it.
    const ok = await action(call, v.id, { attach: {} });
    assert.equal(ok.state, 'succeeded', JSON.stringify(ok.error));
    assert.equal((await action(call, v.id, { detach: {} })).state, 'succeeded');
  });

  test('an identity from trusted Keystone headers reaches Barbican unchanged: project, user and roles', async () => {
    const project = `ks-${randomUUID().slice(0, 8)}`;
    const keystone = (user: string, roles: string) => ({ 'x-identity-status': 'Confirmed', 'x-user-name': user, 'x-project-id': project, 'x-roles': roles });
    const r = await call('POST', '/v1/volumes', { headers: keystone('glance-svc', 'member,reader'), body: { name: 'ks', format: 'luks2', size: '1M', luks: FAST_LUKS } });
    assert.equal(r.status, 202, r.text);
    let polled: any;
    for (const until = Date.now() + 30_000; Date.now() < until; await new Promise((res) => setTimeout(res, 50))) {
      polled = (await call('GET', `/v1/jobs/${r.json.job.id}`, { headers: keystone('glance-svc', 'member') })).json.job;
      if (polled.state !== 'queued' && polled.state !== 'running') break;
    }
    assert.equal(polled.state, 'succeeded', JSON.stringify(polled.error));
    const v = (await call('GET', `/v1/volumes/${r.json.volume.id}`, { headers: keystone('glance-svc', 'member') })).json.volume;
    // Straight from Barbican, as that project: the secret is there, made by that user.
    const res = await fetch(`${url}/v1/secrets/${v.encryption_key_id}`, { headers: { 'X-Project-Id': project, 'X-User-Id': 'glance-svc', 'X-Roles': 'member', Accept: 'application/json' } });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as any).creator_id, 'glance-svc');
    // p1 (the tokens file's project) cannot see it: it belongs to the Keystone caller's project.
    assert.notEqual((await barbicanPayload(url, v.encryption_key_id)).status, 200);
  });

  test("another project's Barbican secret is refused as the caller (Barbican's own policy decides)", async () => {
    const v = await created(call, { name: 'b5', format: 'luks2', size: '1M', luks: FAST_LUKS });
    const r = await call('POST', '/v1/volumes', { who: 'other', body: { name: 'steal', format: 'luks2', size: '1M', key: { id: v.encryption_key_id } } });
    assert.equal(r.status, 403, r.text);
    assert.equal(r.json.error.code, 'FORBIDDEN');
  });
});

describe('serve with keys in a KMIP server', { skip: 'skip' in kmip ? kmip.skip : cryptsetupMissing }, () => {
  const k = 'skip' in kmip ? undefined : kmip;
  const env = setupState();
  let service: Service;
  let call: Call;
  let direct: KmipKeyManager;
  before(async () => {
    ({ service, call } = await startService(`kmip://${k!.host}:${k!.port}`, { caFile: k!.ca, certFile: k!.cert, keyFile: k!.key, attempts: 2 }, env));
    direct = new KmipKeyManager({ host: k!.host, port: k!.port, caFile: k!.ca, certFile: k!.cert, keyFile: k!.key });
  });
  after(async () => {
    await direct?.close();
    await service?.close();
    env.cleanup();
  });

  test('a LUKS2 volume keyed in KMIP opens with hex(key) in cryptsetup; change_key moves it to a new KMIP key', async () => {
    assert.equal((await call('GET', '/v1/health')).json.key_manager, 'kmip');
    const v = await created(call, { name: 'k1', format: 'luks2', size: '2M', luks: FAST_LUKS });
    const obj = await direct.get(ADMIN, v.encryption_key_id);
    const hex = Buffer.from(obj.secret.expose()).toString('hex');
    obj.secret.wipe();
    assert.ok(cryptsetupAccepts(v.path, hex), 'cryptsetup opens it with hex of the KMIP key');
    const job = await action(call, v.id, { change_key: { luks: FAST_LUKS } });
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    const fresh = await direct.get(ADMIN, job.result.new_key_id);
    assert.ok(cryptsetupAccepts(v.path, Buffer.from(fresh.secret.expose()).toString('hex')));
    fresh.secret.wipe();
    assert.equal(cryptsetupAccepts(v.path, hex), false);
    await assert.rejects(direct.get(ADMIN, v.encryption_key_id), { code: 'KEY_NOT_FOUND' });
    assert.equal((await call('DELETE', `/v1/volumes/${v.id}`, { who: 'admin' })).status, 204);
    await assert.rejects(direct.get(ADMIN, job.result.new_key_id), { code: 'KEY_NOT_FOUND' }, 'the key went with the volume');
  });

  test('KMIP sees no roles: the service keeps a creator from reading the key it made', async () => {
    const v = await created(call, { name: 'k2', format: 'luks2', size: '1M', luks: FAST_LUKS }, 'creator');
    const a = await action(call, v.id, { attach: {} }, 'creator');
    assert.equal(a.state, 'failed');
    assert.equal(a.error.code, 'FORBIDDEN');
    const ok = await action(call, v.id, { attach: {} });
    assert.equal(ok.state, 'succeeded', JSON.stringify(ok.error));
    assert.equal((await action(call, v.id, { detach: {} })).state, 'succeeded');
  });
});

describe('an unreachable key manager', () => {
  const env = setupState();
  let service: Service;
  let call: Call;
  before(async () => {
    // Nobody listens there: every attempt is refused at once.
    ({ service, call } = await startService(`barbican+http://127.0.0.1:${await freePort()}`, { attempts: 2, timeoutMs: 1000 }, env));
  });
  after(async () => {
    await service?.close();
    env.cleanup();
  });

  test('the API answers 503 BACKEND_UNAVAILABLE (not 500), and a job fails with the same code', async () => {
    assert.equal((await call('GET', '/v1/health')).status, 200, 'the service itself is up');
    const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'u1', format: 'luks2', size: '1M', key: { id: randomUUID() } } });
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json.error.code, 'BACKEND_UNAVAILABLE');
    // Not remembered under an Idempotency-Key: a retry once the key manager is back may succeed.
    const headers = { 'idempotency-key': 'u1-retry' };
    assert.equal((await call('POST', '/v1/volumes', { who: 'admin', headers, body: { name: 'u1', format: 'luks2', size: '1M', key: { id: randomUUID() } } })).status, 503);
    const j = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'u2', format: 'luks2', size: '1M', luks: FAST_LUKS } });
    assert.equal(j.status, 202, j.text);
    const job = await waitJob(call, j.json.job.id);
    assert.equal(job.state, 'failed');
    assert.equal(job.error.code, 'BACKEND_UNAVAILABLE');
    const v = (await call('GET', `/v1/volumes/${j.json.volume.id}`, { who: 'admin' })).json.volume;
    assert.equal(v.status, 'error');
    assert.equal(existsSync(v.path), false, 'no half-made volume file');
  });
});

test('serve --key-manager with a bad URI (or a network option without one) is a usage error, before any state is made', async () => {
  const env = setupState();
  try {
    const base = ['serve', '--listen', `127.0.0.1:${await freePort()}`, '--state', env.state, '--tokens', env.tokensFile];
    for (const extra of [['--key-manager', 'vault://127.0.0.1:8200'], ['--key-manager', 'barbican+http://'], ['--key-manager', 'memory:'], ['--tls-ca', env.tokensFile], ['--key-manager', `kmip://127.0.0.1:1`, '--timeout', 'soon']]) {
      const r = runCli([...base, ...extra], { timeout: 30_000 });
      assert.equal(r.status, 1, `${extra.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /INVALID_ARGUMENT/, extra.join(' '));
    }
    assert.equal(existsSync(env.state), false, 'nothing was created under --state');
  } finally {
    env.cleanup();
  }
});
