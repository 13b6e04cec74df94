/**
 * Scale-out on a real PostgreSQL (scripts/servers/postgresql.sh): one `brickcrypt serve --role
 * api` and two `--role worker` processes on one database and one volume directory. Jobs
 * submitted to the API run on the workers; progress streams through the API (SSE fed by
 * LISTEN/NOTIFY); a cancellation sent to the API stops a job on a worker; a job whose volume's
 * advisory lock is held elsewhere waits for it; and a worker killed with -9 in the middle of a
 * copy loses its job to the other worker after the heartbeat timeout, which continues from the
 * last checkpoint and ends with exactly the image's bytes.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { freshDatabase, postgresServer } from '../helpers/postgres-server.js';
import { needTools, whichTool } from '../helpers/tools.js';
import { openKeyManager } from '../../src/keys/open-key-manager.js';
import { PostgresStateStore } from '../../src/service/postgres-store.js';
import { FAST_LUKS, initRepository, setupState, startServeProcess, stopProcess, volumePlaintext, waitFor, waitJob, type ServeProcess } from './service-helpers.js';

const env = setupState();
// Known before the tests are declared, so a missing server skips them (and fails under CI).
const server: { url: string } | { skip: string } = await postgresServer();
let database: { url: string; drop: () => Promise<void> } | undefined;
let store: PostgresStateStore | undefined;

interface Proc extends ServeProcess {
  name: string;
}
const procs: Proc[] = [];

async function startServe(name: string, role: 'api' | 'worker', extra: string[] = []): Promise<Proc> {
  const args = ['--state', env.state, '--tokens', env.tokensFile, '--image-dir', env.dir, '--database', database!.url, '--role', role, '--backup-repo', `file:${join(env.dir, 'repo')}`, ...extra];
  const p = { name, ...(await startServeProcess(args, name)) };
  procs.push(p);
  return p;
}

const kill = stopProcess;
const execFileP = promisify(execFile);

async function plaintextOf(id: string): Promise<Buffer> {
  const km = await openKeyManager(`local:${join(env.state, 'keystore.db')}`);
  try {
    return await volumePlaintext((await store!.volume(id))!, km);
  } finally {
    await km.close();
  }
}

// Slow copies (8 MiB/s, a checkpoint per MiB) so a worker can be killed half-way; a worker
// silent for 3 s loses its jobs.
const WORKER = ['--workers', '1', '--copy-bps-limit', '8M', '--checkpoint-every', '1M', '--heartbeat-timeout', '3'];
let api: Proc;
let workerA: Proc;
let workerB: Proc;

before(async () => {
  if ('skip' in server) return;
  database = await freshDatabase(server.url, 'scale_out');
  mkdirSync(env.state, { recursive: true, mode: 0o700 });
  // The backup repository's key in the service's keystore (what `backup init` does).
  const km = await openKeyManager(`local:${join(env.state, 'keystore.db')}`, { init: true });
  await initRepository(km, `file:${join(env.dir, 'repo')}`);
  await km.close();
  // Started one after the other: the first creates the schemas.
  api = await startServe('api', 'api');
  workerA = await startServe('worker-a', 'worker', WORKER);
  workerB = await startServe('worker-b', 'worker', WORKER);
  store = await PostgresStateStore.connect(database.url);
});

after(async () => {
  for (const p of procs) await kill(p.child, 'SIGTERM');
  await store?.close();
  await database?.drop().catch(() => undefined);
  env.cleanup();
});

/** The processes (alive or not) that took job `jobId` of `type`. */
const takenBy = (jobId: string, type: string) => procs.filter((p) => p.stderr().includes(`job ${jobId} (${type}) taken by worker`));
const skip = () => (server && 'skip' in server ? server.skip : false);
const runsOn = (jobId: string) => [workerA, workerB].filter((w) => w.stderr().includes(`job ${jobId} (`) && w.stderr().includes('taken by worker'));

test('jobs submitted to the API process run on a worker; the API role runs none', { skip: skip() }, async () => {
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'blank', format: 'luks2', size: '1M', luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  const job = await waitJob(api.call, r.json.job.id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(runsOn(job.id).length, 1, 'exactly one worker took the job');
  assert.ok(!api.stderr().includes('taken by worker'), api.stderr());
  // Every process answers the API from the same state.
  const seen = await workerB.call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' });
  assert.equal(seen.json.volume.status, 'available');
  const health = await api.call('GET', '/v1/health');
  assert.deepEqual({ status: health.json.status, role: health.json.role, state: health.json.state }, { status: 'ok', role: 'api', state: 'postgresql' });
});

test('a worker killed -9 mid-copy: after the heartbeat timeout the other worker continues from the checkpoint, exact bytes', { skip: skip() }, async () => {
  const image = join(env.dir, 'big.raw');
  const bytes = randomBytes(24 << 20);
  writeFileSync(image, bytes);
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'big', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  const id = r.json.job.id as string;
  await waitFor(api.call, id, (j) => j.state === 'running' && j.progress.bytes_done >= 6 << 20);
  const [victim] = runsOn(id);
  assert.ok(victim, 'a worker runs the job');
  const survivor = victim === workerA ? workerB : workerA;
  await kill(victim.child, 'SIGKILL');
  const job = await waitJob(api.call, id, 'admin', 120_000);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.ok(job.result.resumed_from > 0, `continued from a checkpoint: ${JSON.stringify(job.result)}`);
  assert.equal(job.result.attempts, 2);
  assert.ok(survivor.stderr().includes(`job ${id} (create_volume) taken by worker`), survivor.stderr());
  assert.match(survivor.stderr() + api.stderr(), new RegExp(`job ${id} \\(create_volume\\) lost its worker`));
  assert.ok((await plaintextOf(r.json.volume.id)).equals(bytes), 'the volume holds exactly the image');
  // A new worker takes the place of the killed one for the tests that follow.
  if (victim === workerA) workerA = await startServe('worker-a2', 'worker', WORKER);
  else workerB = await startServe('worker-b2', 'worker', WORKER);
});

test('SIGTERM of a worker mid-copy hands its job back at once: another worker continues from the checkpoint', { skip: skip() }, async () => {
  const image = join(env.dir, 'term.raw');
  const bytes = randomBytes(16 << 20);
  writeFileSync(image, bytes);
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'term', format: 'raw', source: { image_file: image } } });
  assert.equal(r.status, 202, r.text);
  const id = r.json.job.id as string;
  await waitFor(api.call, id, (j) => j.state === 'running' && j.progress.bytes_done >= 4 << 20);
  const [victim] = runsOn(id);
  assert.ok(victim);
  const survivor = victim === workerA ? workerB : workerA;
  const stoppedAt = Date.now();
  await kill(victim.child, 'SIGTERM');
  await waitFor(api.call, id, (j) => j.state !== 'queued' && survivor.stderr().includes(`job ${id} (create_volume) taken by worker`), 30_000);
  assert.ok(Date.now() - stoppedAt < 2500, 'taken over before any heartbeat timeout');
  const job = await waitJob(api.call, id, 'admin', 60_000);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.ok(job.result.resumed_from > 0, JSON.stringify(job.result));
  assert.ok((await plaintextOf(r.json.volume.id)).equals(bytes));
  if (victim === workerA) workerA = await startServe('worker-a3', 'worker', WORKER);
  else workerB = await startServe('worker-b3', 'worker', WORKER);
});

test('a worker whose session holding the volume lock breaks stops writing at once; the job continues from its checkpoint', { skip: skip() }, async () => {
  const image = join(env.dir, 'fence.raw');
  const bytes = randomBytes(16 << 20);
  writeFileSync(image, bytes);
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'fence', format: 'raw', source: { image_file: image } } });
  const id = r.json.job.id as string;
  const volumeId = r.json.volume.id as string;
  await waitFor(api.call, id, (j) => j.state === 'running' && j.progress.bytes_done >= 4 << 20);
  const [holder] = runsOn(id);
  assert.ok(holder);
  // The session holding the volume's advisory lock, ended from outside (as a network failure would).
  const killed = await store!.pool.query(
    `SELECT pg_terminate_backend(pid) AS ok FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid::bigint = (hashtext($2)::bigint & 4294967295)`,
    [0x62726b63, volumeId],
  );
  assert.equal(killed.rows.length, 1, 'one session holds the volume');
  const job = await waitJob(api.call, id, 'admin', 60_000);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.ok(holder.stderr().includes('the session holding the volume lock broke'), holder.stderr());
  assert.equal(job.result.attempts, 2);
  assert.ok(job.result.resumed_from > 0, JSON.stringify(job.result));
  assert.ok((await plaintextOf(volumeId)).equals(bytes));
});

test('progress of a job on a worker streams through the API (SSE), and a cancel sent to the API stops it there', { skip: skip() }, async () => {
  const image = join(env.dir, 'cancel.raw');
  writeFileSync(image, randomBytes(32 << 20));
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'cancel-me', format: 'raw', source: { image_file: image } } });
  assert.equal(r.status, 202, r.text);
  const id = r.json.job.id as string;
  const events: any[] = [];
  const controller = new AbortController();
  // The SSE stream of the API process, which runs no job itself.
  const res = await fetch(`${api.base}/v1/jobs/${id}/events`, { headers: { authorization: 'Bearer admin-token-p1' }, signal: controller.signal });
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  const readAll = (async () => {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      text += decoder.decode(value, { stream: true });
      for (const m of text.matchAll(/^data: (.*)$/gm)) events.push(JSON.parse(m[1]!));
      text = text.slice(text.lastIndexOf('\n\n') + 2);
    }
  })();
  await waitFor(api.call, id, (j) => j.state === 'running' && j.progress.bytes_done >= 2 << 20);
  const c = await api.call('POST', `/v1/jobs/${id}/cancel`, { who: 'admin' });
  assert.equal(c.status, 202, c.text);
  const job = await waitJob(api.call, id, 'admin', 30_000);
  assert.equal(job.state, 'cancelled', JSON.stringify(job));
  await Promise.race([readAll, new Promise((res) => setTimeout(res, 5000))]);
  controller.abort();
  assert.ok(events.some((e) => e.state === 'running' && e.progress.bytes_done > 0), `progress events: ${JSON.stringify(events.slice(0, 3))}`);
  assert.equal(events.at(-1)?.state, 'cancelled', 'the stream ends with the final state');
  assert.equal((await api.call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume.status, 'error');
});

test('the API process listens again after its LISTEN connection is cut: a later job still streams to its end', { skip: skip() }, async () => {
  const cut = await store!.pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'brickcrypt-serve-listen'`);
  assert.ok(cut.rows.length >= 1, 'listeners were connected');
  await new Promise((res) => setTimeout(res, 2500));
  assert.match(api.stderr(), /job-change listener lost its connection/);
  const r = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'after-cut', format: 'raw', size: 65536 } });
  assert.equal(r.status, 202, r.text);
  const res = await fetch(`${api.base}/v1/jobs/${r.json.job.id}/events`, { headers: { authorization: 'Bearer admin-token-p1' }, signal: AbortSignal.timeout(20_000) });
  const text = await res.text(); // the stream ends after the final state
  const last = [...text.matchAll(/^data: (.*)$/gm)].map((m) => JSON.parse(m[1]!)).at(-1);
  assert.equal(last?.state, 'succeeded', text.slice(-500));
});

test('a job waits while its volume\'s advisory lock is held in another session, and runs once it is released', { skip: skip() }, async () => {
  const created = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'locked', format: 'raw', size: '1M' } });
  assert.equal((await waitJob(api.call, created.json.job.id)).state, 'succeeded');
  const volumeId = created.json.volume.id as string;
  const lock = await store!.tryLockVolume(volumeId);
  assert.ok(lock, 'the test session takes the volume');
  try {
    const r = await api.call('POST', `/v1/volumes/${volumeId}/actions`, { who: 'admin', body: { migrate: { format: 'luks2', luks: FAST_LUKS } } });
    assert.equal(r.status, 202, r.text);
    await new Promise((res) => setTimeout(res, 2500));
    const waiting = await api.call('GET', `/v1/jobs/${r.json.job.id}`, { who: 'admin' });
    assert.equal(waiting.json.job.state, 'queued', 'no worker runs a job on a volume another session holds');
    await lock.release();
    const job = await waitJob(api.call, r.json.job.id, 'admin', 30_000);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
  } finally {
    await lock.release();
  }
});

test('backup and a volume from the backup on PostgreSQL: the backup is found through the shared job table', { skip: skip() }, async () => {
  const image = join(env.dir, 'bk.raw');
  const bytes = randomBytes(2 << 20);
  writeFileSync(image, bytes);
  const created = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'bk', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal((await waitJob(api.call, created.json.job.id)).state, 'succeeded');
  const bk = await api.call('POST', `/v1/volumes/${created.json.volume.id}/actions`, { who: 'admin', body: { backup: {} } });
  assert.equal(bk.status, 202, bk.text);
  const job = await waitJob(api.call, bk.json.job.id);
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const foreign = await api.call('POST', '/v1/volumes', { who: 'other', body: { name: 'f', format: 'luks2', source: { backup_id: job.result.backup_id } } });
  assert.equal(foreign.status, 404, foreign.text);
  const rs = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'bk-restored', format: 'luks2', source: { backup_id: job.result.backup_id } } });
  assert.equal(rs.status, 202, rs.text);
  assert.equal((await waitJob(api.call, rs.json.job.id)).state, 'succeeded');
  assert.ok((await plaintextOf(rs.json.volume.id)).equals(bytes));
});

test('an Idempotency-Key is honoured by every process (the reply is in PostgreSQL); /metrics counts the shared jobs', { skip: skip() }, async () => {
  const body = { name: 'idem', format: 'raw', size: 4096 };
  const first = await api.call('POST', '/v1/volumes', { who: 'admin', body, headers: { 'idempotency-key': 'pg-idem-1' } });
  assert.equal(first.status, 202, first.text);
  const again = await workerB.call('POST', '/v1/volumes', { who: 'admin', body, headers: { 'idempotency-key': 'pg-idem-1' } });
  assert.equal(again.status, 202);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.equal(again.json.volume.id, first.json.volume.id);
  assert.equal((await waitJob(api.call, first.json.job.id)).state, 'succeeded');
  const volumes = (await api.call('GET', '/v1/volumes', { who: 'admin' })).json.volumes.filter((v: any) => v.name === 'idem');
  assert.equal(volumes.length, 1);
  const metrics = await api.call('GET', '/metrics');
  const succeeded = Number(/^brickcrypt_jobs\{state="succeeded"\} (\d+)$/m.exec(metrics.text)?.[1]);
  assert.ok(succeeded >= 5, metrics.text.slice(0, 400));
});

test('attach on PostgreSQL: a worker serves the export, the detach runs on that worker; after it is killed, a new worker serves the volume again', { skip: skip() || needTools('nbdinfo', 'nbdcopy') }, async () => {
  const image = join(env.dir, 'att.raw');
  const bytes = randomBytes(4 << 20);
  writeFileSync(image, bytes);
  const created = await api.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'att', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal((await waitJob(api.call, created.json.job.id)).state, 'succeeded');
  const id = created.json.volume.id as string;
  const act = async (body: unknown) => {
    const r = await api.call('POST', `/v1/volumes/${id}/actions`, { who: 'admin', body });
    assert.equal(r.status, 202, r.text);
    return waitJob(api.call, r.json.job.id, 'admin', 60_000);
  };
  const nbdUriOf = (job: any, uri: string) => {
    const psk = join(env.dir, `${job.id}.psk`);
    writeFileSync(psk, `${job.result.tls_psk_identity}:${job.result.tls_psk_key}\n`, { mode: 0o600 });
    const u = new URL(uri);
    return `nbds://${job.result.tls_psk_identity}@${u.host}${u.pathname}?tls-psk-file=${psk}`;
  };
  const nbdSize = async (uri: string) => Number((await execFileP(whichTool('nbdinfo')!, ['--size', uri], { encoding: 'utf8', timeout: 30_000 })).stdout.trim());

  const att = await act({ attach: {} });
  assert.equal(att.state, 'succeeded', JSON.stringify(att));
  const [server] = takenBy(att.id, 'attach');
  assert.ok(server, 'a worker ran the attach');
  const uri = nbdUriOf(att, att.result.uri);
  const dump = join(env.dir, 'att-dump.raw');
  await execFileP(whichTool('nbdcopy')!, [uri, dump]);
  assert.ok(readFileSync(dump).equals(bytes), 'the export serves the plaintext');
  // Both workers take jobs; the detach waits for the one whose process serves the export.
  const det = await act({ detach: {} });
  assert.equal(det.state, 'succeeded', JSON.stringify(det));
  assert.deepEqual(takenBy(det.id, 'detach'), [server], 'the detach ran on the serving worker');
  await assert.rejects(nbdSize(uri), 'the export is closed');
  assert.equal((await store!.volume(id))!.status, 'available');

  // Attached again, its worker is killed: a worker started later serves it again (same port, same PSK).
  const att2 = await act({ attach: {} });
  assert.equal(att2.state, 'succeeded', JSON.stringify(att2));
  const [victim] = takenBy(att2.id, 'attach');
  assert.ok(victim);
  const uri2 = nbdUriOf(att2, att2.result.uri);
  assert.equal(await nbdSize(uri2), bytes.length);
  await kill(victim.child, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 4000)); // past the 3 s heartbeat timeout
  const fresh = await startServe(`worker-${victim.name}-next`, 'worker', WORKER);
  if (victim === workerA) workerA = fresh;
  else workerB = fresh;
  const rec = (await store!.volume(id))!;
  assert.equal(rec.status, 'in-use');
  assert.match(fresh.stderr(), new RegExp(`volume ${id} served again`));
  assert.equal(await nbdSize(nbdUriOf(att2, (rec.attachment as { uri: string }).uri)), bytes.length);
  const det2 = await act({ detach: {} });
  assert.equal(det2.state, 'succeeded', JSON.stringify(det2));
  assert.deepEqual(takenBy(det2.id, 'detach'), [fresh], 'the detach ran on the worker that took the export over');
  assert.equal((await store!.volume(id))!.status, 'available');
});
