/**
 * The caller's Keystone token behind a trusting proxy (`--trust-proxy-identity`): the
 * `X-Auth-Token` keystonemiddleware passes on reaches the real Glance (scripts/servers/glance.sh)
 * and the real Barbican (scripts/key-servers.sh) on every call made for the caller, seen by a
 * recording proxy in front of each; it is never in the state directory or the log; a job run
 * after a restart (also after `kill -9` of a real `serve` mid-download) has no token and calls
 * with the identity headers alone (and succeeds against a Glance that trusts them); a Bearer
 * token of the tokens file is never forwarded.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { createService, type Service } from '../../src/service/app.js';
import { identify, loadTokensFile } from '../../src/service/caller-identity.js';
import { ForwardedToken, forwardedToken } from '../../src/keys/forwarded-token.js';
import { BarbicanKeyManager } from '../../src/keys/barbican/barbican-key-manager.js';
import { glanceAs, glanceServer, type GlanceTestServer } from '../helpers/glance.js';
import { barbicanServer } from '../helpers/key-servers.js';
import { recordingProxy, type RecordingProxy } from '../helpers/recording-proxy.js';
import { FAST_LUKS, TOKENS, client, setupState, startServeProcess, stopProcess, volumePlaintext, waitFor, waitJob, type Call, type ServeProcess } from './service-helpers.js';

const glance: GlanceTestServer | { skip: string } = await glanceServer();
const barbican = await barbicanServer();
const skip = 'skip' in glance ? glance.skip : false;
const glanceUrl = 'skip' in glance ? '' : glance.url;

let env: ReturnType<typeof setupState>;
let glanceProxy: RecordingProxy;
let barbicanProxy: RecordingProxy | undefined;
const logs: string[] = [];
let imageId: string;
let imageBytes: Buffer;
const tokens: string[] = [];

/** A Keystone-like token (fernet tokens start gAAAAA) no other test uses. */
const newToken = () => {
  const t = `gAAAAAB${randomBytes(32).toString('base64url')}`;
  tokens.push(t);
  return t;
};
const ALICE = TOKENS.admin;
const keystone = (token?: string): Record<string, string> => ({
  'x-identity-status': 'Confirmed',
  'x-user-id': ALICE.user,
  'x-project-id': ALICE.project,
  'x-roles': ALICE.roles.join(','),
  ...(token ? { 'x-auth-token': token } : {}),
});

async function open(start = true): Promise<{ service: Service; call: Call }> {
  const service = await createService({
    stateDir: env.state,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: true },
    imageDirs: [env.dir],
    imageServiceUrl: glanceProxy.url,
    ...(barbicanProxy ? { keyManager: `barbican+${barbicanProxy.url}` } : {}),
    log: (m) => logs.push(m),
  });
  if (start) await service.start();
  return { service, call: client(await service.app.listen({ host: '127.0.0.1', port: 0 })) };
}

before(async () => {
  env = setupState();
  if ('skip' in glance) return;
  glanceProxy = await recordingProxy(glanceUrl);
  if (!('skip' in barbican)) barbicanProxy = await recordingProxy(barbican.url, { rewriteOrigin: true });
  imageBytes = randomBytes(2 << 20);
  const g = glanceAs(glanceUrl, ALICE.project, ALICE.user, [...ALICE.roles]);
  const image = await g.create({ name: 'keystone-token-source', diskFormat: 'raw' });
  await g.upload(image.id, (async function* () {
    yield imageBytes;
  })());
  imageId = image.id;
});

after(async () => {
  if (imageId && !('skip' in glance)) await glanceAs(glanceUrl, ALICE.project, ALICE.user, [...ALICE.roles]).delete(imageId).catch(() => undefined);
  await glanceProxy?.close();
  await barbicanProxy?.close();
  env?.cleanup();
});

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

test('a token is memory-only: JSON drops it, inspection and String() redact it; Bearer callers never carry one', () => {
  const caller = identify({ tokens: new Map(), trustProxyIdentity: true }, keystone('gAAAAAB-secret-value'));
  assert.equal(forwardedToken(caller), 'gAAAAAB-secret-value');
  assert.equal(JSON.stringify(caller).includes('secret-value'), false, JSON.stringify(caller));
  assert.deepEqual(JSON.parse(JSON.stringify(caller)), { user: ALICE.user, project: ALICE.project, roles: ['admin'] });
  assert.equal(inspect(caller).includes('secret-value'), false, inspect(caller));
  assert.equal(`${caller.token}`.includes('secret-value'), false);
  assert.equal(forwardedToken(structuredClone(caller)), undefined, 'a clone (as a worker thread would get) has no live token');
  // The service's own Bearer tokens identify a caller but are never passed on, even with X-Auth-Token present.
  const bearer = identify({ tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: true }, { authorization: `Bearer ${ALICE.token}`, 'x-auth-token': 'gAAAAAB-other' });
  assert.equal(forwardedToken(bearer), undefined);
  assert.throws(() => new ForwardedToken('two\r\nlines'), { code: 'UNAUTHENTICATED' });
});

test("Barbican backend: a caller's own token replaces the configured service token; without one the service token goes", { skip: 'skip' in barbican ? barbican.skip : false }, async () => {
  const proxy = await recordingProxy((barbican as { url: string }).url, { rewriteOrigin: true });
  const km = new BarbicanKeyManager({ url: proxy.url, authToken: 'service-token-value' });
  try {
    const own = newToken();
    const alice = { user: ALICE.user, project: ALICE.project, roles: [...ALICE.roles] };
    const made = await km.createKey({ ...alice, token: new ForwardedToken(own) }, { bitLength: 256 });
    made.key.wipe();
    const n = proxy.requests.length;
    assert.ok(n > 0);
    for (const q of proxy.requests) assert.equal(q.headers['x-auth-token'], own, `${q.method} ${q.path}`);
    await km.delete(alice, made.id, { force: true });
    for (const q of proxy.requests.slice(n)) assert.equal(q.headers['x-auth-token'], 'service-token-value', `${q.method} ${q.path}`);
  } finally {
    await km.close();
    await proxy.close();
  }
});

test('the X-Auth-Token of a trusted proxy reaches Glance and Barbican on every call for the caller, and is never stored or logged', { skip }, async () => {
  const token = newToken();
  const { service, call } = await open();
  try {
    const g0 = glanceProxy.requests.length;
    const b0 = barbicanProxy?.requests.length ?? 0;
    const r = await call('POST', '/v1/volumes', { headers: keystone(token), body: { name: 'ks', format: 'luks2', source: { image_id: imageId }, luks: FAST_LUKS } });
    assert.equal(r.status, 202, r.text);
    const job = await waitJob(call, r.json.job.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    const vol = service.db.volume(r.json.volume.id)!;
    const toBarbican = barbicanProxy?.requests.slice(b0) ?? [];

    const toGlance = glanceProxy.requests.slice(g0);
    assert.ok(toGlance.some((q) => q.method === 'GET' && q.path.endsWith(`/v2/images/${imageId}`)), 'the image was shown');
    assert.ok(toGlance.some((q) => q.method === 'GET' && q.path.endsWith(`/v2/images/${imageId}/file`)), 'the image data was read');
    for (const q of toGlance) assert.equal(q.headers['x-auth-token'], token, `${q.method} ${q.path} carries the caller's token`);
    for (const q of toGlance) assert.equal(q.headers['x-user-id'], ALICE.user, 'and the identity headers');
    if (barbicanProxy) {
      assert.ok(toBarbican.some((q) => q.method === 'POST' && q.path === '/v1/orders'), 'the volume key was ordered in Barbican');
      for (const q of toBarbican) assert.equal(q.headers['x-auth-token'], token, `barbican ${q.method} ${q.path} carries the caller's token`);
    }
    // (read here as the test's admin, without a token)
    assert.deepEqual(await volumePlaintext(vol, service.keys), imageBytes);

    // upload_to_image (decrypted, with glance-direct) as the same caller with a new token.
    const token2 = newToken();
    const g1 = glanceProxy.requests.length;
    const b1 = barbicanProxy?.requests.length ?? 0;
    const up = await call('POST', `/v1/volumes/${vol.id}/actions`, { headers: keystone(token2), body: { upload_to_image: { image_name: 'ks-up', mode: 'decrypted', import_method: 'glance-direct' } } });
    assert.equal(up.status, 202, up.text);
    const upJob = await waitJob(call, up.json.job.id);
    assert.equal(upJob.state, 'succeeded', JSON.stringify(upJob));
    const upReqs = glanceProxy.requests.slice(g1);
    assert.ok(upReqs.some((q) => q.method === 'PUT' && q.path.endsWith(`/v2/images/${upJob.result.image_id}/stage`)), 'staged');
    assert.ok(upReqs.some((q) => q.method === 'POST' && q.path.endsWith(`/v2/images/${upJob.result.image_id}/import`)), 'imported');
    for (const q of upReqs) assert.equal(q.headers['x-auth-token'], token2, `${q.method} ${q.path}`);
    if (barbicanProxy) {
      const keyReads = barbicanProxy.requests.slice(b1).filter((q) => q.path.startsWith(`/v1/secrets/${vol.encryption_key_id}`));
      assert.ok(keyReads.length > 0, "the decrypted upload read the volume's key in Barbican");
      for (const q of keyReads) assert.equal(q.headers['x-auth-token'], token2, `barbican ${q.method} ${q.path}`);
    }
    await glanceAs(glanceUrl, ALICE.project, ALICE.user, [...ALICE.roles]).delete(upJob.result.image_id);

    // A Bearer caller (the tokens file) sends no token at all.
    const g2 = glanceProxy.requests.length;
    const b = await call('POST', '/v1/volumes', { who: 'admin', headers: { 'x-auth-token': newToken() }, body: { name: 'bearer', format: 'raw', source: { image_id: imageId } } });
    assert.equal(b.status, 202, b.text);
    assert.equal((await waitJob(call, b.json.job.id)).state, 'succeeded');
    assert.ok(glanceProxy.requests.length > g2);
    for (const q of glanceProxy.requests.slice(g2)) assert.equal(q.headers['x-auth-token'], undefined, `${q.method} ${q.path}`);
  } finally {
    await service.close();
  }
});

test('a job run after a restart has no token: it calls with the identity headers alone', { skip }, async () => {
  const token = newToken();
  // The first process accepts the request (Glance sees the token at validation) but never runs the job.
  let { service, call } = await open(false);
  const g0 = glanceProxy.requests.length;
  const r = await call('POST', '/v1/volumes', { headers: keystone(token), body: { name: 'restarted', format: 'raw', source: { image_id: imageId } } });
  assert.equal(r.status, 202, r.text);
  assert.equal(r.json.job.state, 'queued');
  await service.close();
  const atRequest = glanceProxy.requests.slice(g0);
  assert.ok(atRequest.length > 0);
  for (const q of atRequest) assert.equal(q.headers['x-auth-token'], token);

  ({ service, call } = await open());
  try {
    const g1 = glanceProxy.requests.length;
    const job = await waitJob(call, r.json.job.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.deepEqual(await volumePlaintext(service.db.volume(r.json.volume.id)!, service.keys), imageBytes);
    const inJob = glanceProxy.requests.slice(g1);
    assert.ok(inJob.some((q) => q.path.endsWith(`/v2/images/${imageId}/file`)), 'the resumed job read the image');
    for (const q of inJob) {
      assert.equal(q.headers['x-auth-token'], undefined, `${q.method} ${q.path}: no token after the restart`);
      assert.equal(q.headers['x-identity-status'], 'Confirmed');
      assert.equal(q.headers['x-project-id'], ALICE.project);
    }
  } finally {
    await service.close();
  }
});

test('kill -9 mid-download, then a restart: the continued job reads the image with the identity headers alone', { skip }, async () => {
  const env2 = setupState();
  const big = randomBytes(24 << 20);
  const g = glanceAs(glanceUrl, ALICE.project, ALICE.user, [...ALICE.roles]);
  const image = await g.create({ name: 'keystone-token-big', diskFormat: 'raw' });
  const slow = await recordingProxy(glanceUrl, { slowDownload: { path: /\/file$/, msPerChunk: 4 } });
  const token = newToken();
  const args = ['--state', env2.state, '--tokens', env2.tokensFile, '--trust-proxy-identity', '--image-dir', env2.dir, '--image-service', slow.url];
  let serve: ServeProcess | undefined;
  const stderrs: string[] = [];
  try {
    await g.upload(image.id, (async function* () {
      yield big;
    })());
    serve = await startServeProcess(args);
    const r = await serve.call('POST', '/v1/volumes', { headers: keystone(token), body: { name: 'killed', format: 'raw', source: { image_id: image.id } } });
    assert.equal(r.status, 202, r.text);
    await waitFor(serve.call, r.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done >= 1 << 20);
    const beforeKill = slow.requests.length;
    await stopProcess(serve.child, 'SIGKILL');
    stderrs.push(serve.stderr());
    for (const q of slow.requests.slice(0, beforeKill)) assert.equal(q.headers['x-auth-token'], token, `${q.method} ${q.path} before the kill`);
    serve = await startServeProcess(args);
    const job = await waitJob(serve.call, r.json.job.id, 'admin', 120_000);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.equal(job.result.runs, 2, 'the killed run and the one after the restart');
    const after = slow.requests.slice(beforeKill);
    assert.ok(after.some((q) => q.path.endsWith(`/v2/images/${image.id}/file`)), 'the restarted job read the image again');
    for (const q of after) {
      assert.equal(q.headers['x-auth-token'], undefined, `${q.method} ${q.path} after the restart`);
      assert.equal(q.headers['x-user-id'], ALICE.user);
    }
    const vol = (await serve.call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume;
    assert.deepEqual(readFileSync(vol.path), big);
    await stopProcess(serve.child);
    stderrs.push(serve.stderr());
    serve = undefined;
    const all = Buffer.concat(filesUnder(env2.state).map((f) => readFileSync(f)));
    assert.ok(all.includes(Buffer.from(r.json.job.id)), 'the scan reads the job rows');
    assert.equal(all.includes(Buffer.from(token)), false, 'the token is in the state directory');
    assert.equal(stderrs.some((e) => e.includes(token)), false, 'the token is in the output of serve');
  } finally {
    if (serve) await stopProcess(serve.child, 'SIGKILL');
    await slow.close();
    await g.delete(image.id).catch(() => undefined);
    env2.cleanup();
  }
});

test('no token is in any file of the state directory or in the log', { skip }, async () => {
  assert.ok(tokens.length >= 3, 'the tests above sent tokens');
  const files = filesUnder(env.state);
  const all = Buffer.concat(files.map((f) => readFileSync(f)));
  // The scan reads the database: the job rows' callers are there, without tokens.
  assert.ok(all.includes(Buffer.from(`"user":"${ALICE.user}"`)), `the scan sees job rows (${files.join(', ')})`);
  for (const t of tokens) {
    assert.equal(all.includes(Buffer.from(t)), false, 'a token reached the state directory');
    assert.equal(logs.some((l) => l.includes(t)), false, 'a token reached the log');
  }
});
