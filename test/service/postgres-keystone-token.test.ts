/**
 * Keystone token forwarding on PostgreSQL (`serve --database`), against the real Glance
 * (scripts/servers/glance.sh) behind a recording proxy: a process of role `all` runs the job it
 * accepted with the caller's token; with `--role api` plus a worker, the API process calls
 * Glance with the token while it validates the request, and the worker (which never saw it)
 * with the identity headers alone. No token is in any table of the database (jobs, pg-boss).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { createService, type Service } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { glanceAs, glanceServer, type GlanceTestServer } from '../helpers/glance.js';
import { freshDatabase, postgresServer } from '../helpers/postgres-server.js';
import { recordingProxy, type RecordingProxy } from '../helpers/recording-proxy.js';
import { TOKENS, client, setupState, waitJob } from './service-helpers.js';

const glance: GlanceTestServer | { skip: string } = await glanceServer();
const pgServer = await postgresServer();
const skip = 'skip' in glance ? glance.skip : 'skip' in pgServer ? pgServer.skip : false;
const glanceUrl = 'skip' in glance ? '' : glance.url;

const env = setupState();
let database: { url: string; drop: () => Promise<void> } | undefined;
let proxy: RecordingProxy;
let imageId: string;
let imageBytes: Buffer;
const services: Service[] = [];
const tokens: string[] = [];
const ALICE = TOKENS.admin;
const keystone = (token: string): Record<string, string> => ({
  'x-identity-status': 'Confirmed',
  'x-user-id': ALICE.user,
  'x-project-id': ALICE.project,
  'x-roles': ALICE.roles.join(','),
  'x-auth-token': token,
});
const newToken = () => {
  const t = `gAAAAAB${randomBytes(32).toString('base64url')}`;
  tokens.push(t);
  return t;
};

async function open(state: string, role: 'all' | 'api' | 'worker') {
  const service = await createService({
    stateDir: join(env.dir, state),
    database: database!.url,
    role,
    heartbeatTimeoutSeconds: 10,
    identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: true },
    imageServiceUrl: proxy.url,
  });
  services.push(service);
  await service.start();
  return { service, call: client(await service.app.listen({ host: '127.0.0.1', port: 0 })) };
}

before(async () => {
  if (skip) return;
  database = await freshDatabase((pgServer as { url: string }).url, 'keystone_token');
  proxy = await recordingProxy(glanceUrl);
  imageBytes = randomBytes(1 << 20);
  const g = glanceAs(glanceUrl, ALICE.project, ALICE.user, [...ALICE.roles]);
  const image = await g.create({ name: 'pg-keystone-token', diskFormat: 'raw' });
  await g.upload(image.id, (async function* () {
    yield imageBytes;
  })());
  imageId = image.id;
});

after(async () => {
  for (const s of services.reverse()) await s.close().catch(() => undefined);
  await proxy?.close();
  if (imageId) await glanceAs(glanceUrl, ALICE.project, ALICE.user, [...ALICE.roles]).delete(imageId).catch(() => undefined);
  await database?.drop().catch(() => undefined);
  env.cleanup();
});

test('role all: the process that accepted the request runs the job with the caller token', { skip }, async () => {
  const { service, call } = await open('all', 'all');
  const token = newToken();
  const n = proxy.requests.length;
  const r = await call('POST', '/v1/volumes', { headers: keystone(token), body: { name: 'pg-all', format: 'raw', source: { image_id: imageId } } });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(call, r.json.job.id, 'admin', 60_000);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const seen = proxy.requests.slice(n);
  assert.ok(seen.some((q) => q.path.endsWith(`/v2/images/${imageId}/file`)));
  for (const q of seen) assert.equal(q.headers['x-auth-token'], token, `${q.method} ${q.path}`);
  const vol = (await call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume;
  assert.deepEqual(readFileSync(vol.path), imageBytes);
  await service.close();
  services.splice(services.indexOf(service), 1);
});

test('role api + worker: the API validates with the token, the worker calls with the identity headers alone', { skip }, async () => {
  const api = await open('api', 'api');
  await open('worker', 'worker');
  const token = newToken();
  const n = proxy.requests.length;
  const r = await api.call('POST', '/v1/volumes', { headers: keystone(token), body: { name: 'pg-split', format: 'raw', source: { image_id: imageId } } });
  assert.equal(r.status, 202, r.text);
  const atRequest = proxy.requests.length;
  assert.ok(atRequest > n, 'the API process showed the image');
  for (const q of proxy.requests.slice(n, atRequest)) assert.equal(q.headers['x-auth-token'], token, `${q.method} ${q.path}`);
  const job = await waitJob(api.call, r.json.job.id, 'admin', 60_000);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const inJob = proxy.requests.slice(atRequest);
  assert.ok(inJob.some((q) => q.path.endsWith(`/v2/images/${imageId}/file`)), 'the worker read the image');
  for (const q of inJob) {
    assert.equal(q.headers['x-auth-token'], undefined, `${q.method} ${q.path}`);
    assert.equal(q.headers['x-identity-status'], 'Confirmed');
  }
});

test('no token is in any row of the database', { skip }, async () => {
  assert.equal(tokens.length, 2);
  const c = new pg.Client({ connectionString: database!.url });
  await c.connect();
  try {
    const tables = await c.query<{ s: string; t: string }>(`SELECT table_schema AS s, table_name AS t FROM information_schema.tables WHERE table_schema IN ('brickcrypt', 'brickcrypt_boss') AND table_type = 'BASE TABLE'`);
    assert.ok(tables.rows.some((r) => r.s === 'brickcrypt' && r.t === 'jobs'));
    assert.ok(tables.rows.some((r) => r.s === 'brickcrypt_boss'), 'the pg-boss tables are scanned too');
    let dump = '';
    for (const { s, t } of tables.rows) {
      const rows = await c.query(`SELECT x::text AS row FROM "${s}"."${t}" x`);
      dump += rows.rows.map((r) => r.row).join('\n');
    }
    assert.ok(dump.includes('pg-split') && dump.includes(`""user"": ""${ALICE.user}""`), 'the scan sees the volume and job rows (with their callers)');
    for (const t of tokens) assert.equal(dump.includes(t), false, 'a token is in the database');
  } finally {
    await c.end();
  }
});
