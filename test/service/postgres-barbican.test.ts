/**
 * Scale-out with a shared key manager: `brickcrypt serve` processes on a real PostgreSQL
 * (scripts/servers/postgresql.sh) with DIFFERENT --state directories, as on separate hosts,
 * one shared --volumes-dir and one real Barbican (scripts/key-servers.sh). A volume created
 * through the API process is made by the worker of "host B" with a key in Barbican; later
 * actions on it (change_key, attach, detach) run on a worker of "host A", which reads that key
 * from Barbican as the caller. No process has a local keystore.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { barbicanServer } from '../helpers/key-servers.js';
import { freshDatabase, postgresServer } from '../helpers/postgres-server.js';
import { needTools, runStatus } from '../helpers/tools.js';
import { FAST_LUKS, TOKENS, setupState, startServeProcess, stopProcess, waitJob, type ServeProcess } from './service-helpers.js';

const env = setupState();
const pgServer = await postgresServer();
const barbican = await barbicanServer();
const skip = 'skip' in pgServer ? pgServer.skip : 'skip' in barbican ? barbican.skip : needTools('cryptsetup');
const barbicanUrl = 'url' in barbican ? barbican.url : '';
let database: { url: string; drop: () => Promise<void> } | undefined;

const stateA = join(env.dir, 'host-a');
const stateB = join(env.dir, 'host-b');
const volumesDir = join(env.dir, 'shared-volumes');
const procs: ServeProcess[] = [];

async function startServe(state: string, role: 'api' | 'worker', name: string): Promise<ServeProcess> {
  const p = await startServeProcess(
    ['--state', state, '--volumes-dir', volumesDir, '--tokens', env.tokensFile, '--image-dir', env.dir, '--database', database!.url, '--role', role, '--key-manager', `barbican+${barbicanUrl}`, '--timeout', '5000'],
    name,
  );
  procs.push(p);
  return p;
}

async function payload(id: string): Promise<Buffer> {
  const t = TOKENS.admin;
  const r = await fetch(`${barbicanUrl}/v1/secrets/${id}/payload`, { headers: { 'X-Project-Id': t.project, 'X-User-Id': t.user, 'X-Roles': 'admin', Accept: 'application/octet-stream' } });
  assert.equal(r.status, 200, `secret ${id} is in Barbican`);
  return Buffer.from(await r.arrayBuffer());
}
const opensWith = (path: string, key: Buffer) => runStatus('cryptsetup', ['open', '--test-passphrase', '--key-file=-', path], { input: key.toString('hex') }).status === 0;
const ranOn = (p: ServeProcess, jobId: string, type: string) => p.stderr().includes(`job ${jobId} (${type}) taken by worker`);

before(async () => {
  if (skip) return;
  database = await freshDatabase((pgServer as { url: string }).url, 'barbican_scale');
  mkdirSync(volumesDir, { recursive: true });
});

after(async () => {
  for (const p of procs) await stopProcess(p.child, 'SIGTERM');
  await database?.drop().catch(() => undefined);
  env.cleanup();
});

test('a volume made by the worker on host B is changed and attached by the worker on host A, with its key in Barbican', { skip }, async () => {
  const api = await startServe(stateA, 'api', 'api-a');
  let workerB: ServeProcess | undefined = await startServe(stateB, 'worker', 'worker-b');
  const health = await api.call('GET', '/v1/health');
  assert.deepEqual({ state: health.json.state, key_manager: health.json.key_manager }, { state: 'postgresql', key_manager: 'barbican' });

  const image = join(env.dir, 'image.raw');
  const bytes = randomBytes(2 << 20);
  writeFileSync(image, bytes);
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'shared', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  const created = await waitJob(api.call, r.json.job.id, 'admin', 60_000);
  assert.equal(created.state, 'succeeded', JSON.stringify(created.error) + workerB.stderr());
  assert.ok(ranOn(workerB, created.id, 'create_volume'), 'host B made it');
  const v = (await api.call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume;
  assert.ok(v.path.startsWith(volumesDir), v.path);
  const firstKey = await payload(v.encryption_key_id);
  assert.ok(opensWith(v.path, firstKey), 'cryptsetup opens it with hex of the Barbican key');

  // Host B goes away; host A's worker (its own --state, no keystore) takes the later actions.
  await stopProcess(workerB.child, 'SIGTERM');
  workerB = undefined;
  const workerA = await startServe(stateA, 'worker', 'worker-a');
  const ck = await api.call('POST', `/v1/volumes/${v.id}/actions`, { who: 'admin', body: { change_key: { luks: FAST_LUKS } } });
  assert.equal(ck.status, 202, ck.text);
  const changed = await waitJob(api.call, ck.json.job.id, 'admin', 60_000);
  assert.equal(changed.state, 'succeeded', JSON.stringify(changed.error) + workerA.stderr());
  assert.ok(ranOn(workerA, changed.id, 'change_key'), 'host A ran the change_key');
  const newKey = await payload(changed.result.new_key_id);
  assert.ok(opensWith(v.path, newKey), 'the new Barbican key opens it');
  assert.equal(opensWith(v.path, firstKey), false, 'the key host B made no longer does');

  const at = await api.call('POST', `/v1/volumes/${v.id}/actions`, { who: 'admin', body: { attach: {} } });
  const attached = await waitJob(api.call, at.json.job.id, 'admin', 60_000);
  assert.equal(attached.state, 'succeeded', JSON.stringify(attached.error));
  assert.ok(ranOn(workerA, attached.id, 'attach'));
  assert.match(attached.result.uri, /^nbds:\/\//);
  const de = await api.call('POST', `/v1/volumes/${v.id}/actions`, { who: 'admin', body: { detach: {} } });
  assert.equal((await waitJob(api.call, de.json.job.id, 'admin', 60_000)).state, 'succeeded');

  for (const state of [stateA, stateB]) assert.equal(existsSync(join(state, 'keystore.db')), false, `no local keystore under ${state}`);
});
