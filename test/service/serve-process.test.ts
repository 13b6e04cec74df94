/**
 * The real `brickcrypt serve` process: kill -9 in the middle of a copy, restart, and the job
 * continues from its last committed chunk and ends with exactly the image's bytes; a second
 * process on the same state directory is refused (no job runs twice); busy volumes are 409,
 * a full queue is 429, and a cancelled copy leaves no volume file.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { needTools, runCli, whichTool } from '../helpers/tools.js';

const execFileP = promisify(execFile);
import { StateDb } from '../../src/service/state-db.js';
import { openKeyManager } from '../../src/keys/open-key-manager.js';
import { FAST_LUKS, client, freePort, setupState, startServeProcess, stopProcess, volumePlaintext, waitFor, waitJob, type ServeProcess } from './service-helpers.js';

const env = setupState();
after(() => env.cleanup());
async function startServe(extra: string[] = []): Promise<ServeProcess> {
  return startServeProcess(['--state', env.state, '--tokens', env.tokensFile, '--image-dir', env.dir, ...extra]);
}

const stop = stopProcess;

async function readVolume(state: string, id: string): Promise<Buffer> {
  const db = new StateDb(join(state, 'state.db'));
  const v = db.volume(id)!;
  db.close();
  const km = await openKeyManager(`local:${join(state, 'keystore.db')}`);
  try {
    return await volumePlaintext(v, km);
  } finally {
    await km.close();
  }
}

test('kill -9 mid-copy, restart: the job resumes from its last checkpoint and the volume holds exactly the image', async () => {
  const image = join(env.dir, 'big.raw');
  const bytes = randomBytes(24 << 20);
  writeFileSync(image, bytes);
  // 8 MiB/s and a checkpoint every MiB: the copy takes ~3 s, long enough to be killed half-way.
  const limits = ['--copy-bps-limit', '8M', '--checkpoint-every', '1M'];
  let s = await startServe(limits);
  // A second service on the same state directory is refused: it would run the same jobs.
  // (Checked before the copy starts, so the copy cannot finish while this process starts.)
  const second = runCli(['serve', '--listen', `127.0.0.1:${await freePort()}`, '--state', env.state, '--tokens', env.tokensFile], { timeout: 30_000 });
  assert.equal(second.status, 5, second.stderr);
  assert.match(second.stderr, /LOCKED/);
  const call = client(s.base);
  const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'resume', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  const jobId = r.json.job.id;
  const volId = r.json.volume.id;
  await waitFor(call, jobId, (j) => j.state === 'running' && j.progress.bytes_done >= 6 << 20);
  await stop(s.child, 'SIGKILL');
  const db = new StateDb(join(env.state, 'state.db'));
  const killed = db.job(jobId)!;
  db.close();
  assert.equal(killed.state, 'running', 'the row still says running: the process died without a word');
  const committed = (killed.checkpoint as { phase: string; offset: number }).offset;
  assert.equal((killed.checkpoint as { phase: string }).phase, 'copy');
  assert.ok(committed > 0 && committed < bytes.length, `a partial checkpoint (${committed})`);

  s = await startServe(limits);
  try {
    const call2 = client(s.base);
    const job = await waitJob(call2, jobId);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error) + s.stderr());
    assert.equal(job.result.resumed_from, committed, 'continued from the committed chunk');
    assert.equal(job.result.copied_bytes, bytes.length - committed, 'only the rest was copied');
    assert.equal(job.result.attempts, 2);
    assert.match(s.stderr(), new RegExp(`job ${jobId} .*resuming`));
    const v = (await call2('GET', `/v1/volumes/${volId}`, { who: 'admin' })).json.volume;
    assert.equal(v.status, 'available');
  } finally {
    await stop(s.child);
  }
  const content = await readVolume(env.state, volId);
  assert.ok(content.equals(bytes), 'exact bytes after the resumed copy');
});

test('busy volume: actions and DELETE are 409 while a job runs; a full queue is 429; cancel stops the copy and removes the file', async () => {
  const image = join(env.dir, 'slow.raw');
  writeFileSync(image, randomBytes(16 << 20));
  const s = await startServe(['--copy-bps-limit', '2M', '--max-jobs', '2', '--workers', '1']);
  try {
    const call = client(s.base);
    const a = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'slow', format: 'raw', source: { image_file: image } } });
    assert.equal(a.status, 202);
    await waitFor(call, a.json.job.id, (j) => j.state === 'running');
    const busy = await call('POST', `/v1/volumes/${a.json.volume.id}/actions`, { who: 'admin', body: { attach: {} } });
    assert.equal(busy.status, 409, busy.text);
    assert.equal(busy.json.error.code, 'LOCKED');
    const del = await call('DELETE', `/v1/volumes/${a.json.volume.id}`, { who: 'admin' });
    assert.equal(del.status, 409);
    const b = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'queued', format: 'raw', size: '1M' } });
    assert.equal(b.status, 202);
    assert.equal(b.json.job.state, 'queued');
    const full = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'third', format: 'raw', size: '1M' } });
    assert.equal(full.status, 429, full.text);
    assert.equal(full.json.error.code, 'QUEUE_FULL');
    assert.ok(!(await call('GET', '/v1/volumes', { who: 'admin' })).json.volumes.some((v: { name: string }) => v.name === 'third'), 'nothing half-made');

    const c = await call('POST', `/v1/jobs/${a.json.job.id}/cancel`, { who: 'admin' });
    assert.equal(c.status, 202);
    const cancelled = await waitJob(call, a.json.job.id);
    assert.equal(cancelled.state, 'cancelled');
    assert.equal(cancelled.error.code, 'CANCELLED');
    const v = (await call('GET', `/v1/volumes/${a.json.volume.id}`, { who: 'admin' })).json.volume;
    assert.equal(v.status, 'error');
    assert.ok(!existsSync(v.path), 'the half-copied file is removed');
    assert.equal((await waitJob(call, b.json.job.id)).state, 'succeeded', 'the queued job ran after the cancel');
    assert.equal((await call('DELETE', `/v1/volumes/${a.json.volume.id}`, { who: 'admin' })).status, 204);
  } finally {
    await stop(s.child);
  }
});

test("kill -9 of a creator's copy: the key's bytes died with the run, so the volume is made again with a new key and exact bytes", async () => {
  const image = join(env.dir, 'creator.raw');
  const bytes = randomBytes(12 << 20);
  writeFileSync(image, bytes);
  const limits = ['--copy-bps-limit', '6M', '--checkpoint-every', '1M'];
  let s = await startServe(limits);
  const call = client(s.base);
  const r = await call('POST', '/v1/volumes', { who: 'creator', body: { name: 'by-creator', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  await waitFor(call, r.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done >= 2 << 20);
  const firstKey = (await call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'creator' })).json.volume.encryption_key_id;
  assert.ok(firstKey);
  await stop(s.child, 'SIGKILL');
  s = await startServe(limits);
  try {
    const call2 = client(s.base);
    const job = await waitJob(call2, r.json.job.id, 'creator');
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error) + s.stderr());
    assert.equal(job.result.resumed_from, 0);
    assert.equal(job.result.copied_bytes, bytes.length);
    const v = (await call2('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'creator' })).json.volume;
    assert.notEqual(v.encryption_key_id, firstKey, 'a new key');
    assert.equal(v.status, 'available');
  } finally {
    await stop(s.child);
  }
  const listed = runCli(['key', 'list', '--project', 'p1', '--json'], { env: { BRICKCRYPT_HOME: env.state } });
  assert.equal(listed.status, 0, listed.stderr);
  assert.ok(!listed.stdout.includes(firstKey), 'the first key was deleted');
  assert.ok((await readVolume(env.state, r.json.volume.id)).equals(bytes));
});

test('kill -9 while a volume is attached: after the restart it is served again at the same URI with the same PSK', { skip: needTools('nbdinfo') }, async () => {
  let s = await startServe();
  const call = client(s.base);
  const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'att-restart', format: 'luks2', size: '4M', luks: FAST_LUKS } });
  await waitJob(call, r.json.job.id);
  const a = await call('POST', `/v1/volumes/${r.json.volume.id}/actions`, { who: 'admin', body: { attach: {} } });
  const att = await waitJob(call, a.json.job.id);
  assert.equal(att.state, 'succeeded', JSON.stringify(att.error));
  const psk = join(env.dir, 'restart.psk');
  writeFileSync(psk, `${att.result.tls_psk_identity}:${att.result.tls_psk_key}\n`, { mode: 0o600 });
  const u = new URL(att.result.uri);
  const uri = `nbds://${att.result.tls_psk_identity}@${u.host}${u.pathname}?tls-psk-file=${psk}`;
  const size = async () => (await execFileP(whichTool('nbdinfo')!, ['--size', uri], { encoding: 'utf8', timeout: 30_000 })).stdout.trim();
  assert.equal(await size(), String(4 << 20));
  await stop(s.child, 'SIGKILL');
  s = await startServe();
  try {
    assert.equal(await size(), String(4 << 20));
    const v = (await client(s.base)('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume;
    assert.equal(v.status, 'in-use');
  } finally {
    await stop(s.child);
  }
});

test('kill -9 mid-migrate (luks2 -> luks1), restart: the copy resumes, the volume switches to the new file with exact bytes', async () => {
  const image = join(env.dir, 'migrate.raw');
  const bytes = randomBytes(24 << 20);
  writeFileSync(image, bytes);
  let s = await startServe();
  const call = client(s.base);
  const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name: 'mig-kill', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
  assert.equal((await waitJob(call, r.json.job.id)).state, 'succeeded');
  const oldPath = (await call('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume.path;
  await stop(s.child);
  const limits = ['--copy-bps-limit', '8M', '--checkpoint-every', '1M'];
  s = await startServe(limits);
  const m = await client(s.base)('POST', `/v1/volumes/${r.json.volume.id}/actions`, { who: 'admin', body: { migrate: { format: 'luks1', luks: FAST_LUKS } } });
  assert.equal(m.status, 202, m.text);
  await waitFor(client(s.base), m.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done >= 6 << 20);
  await stop(s.child, 'SIGKILL');
  const db = new StateDb(join(env.state, 'state.db'));
  const cp = db.job(m.json.job.id)!.checkpoint as { phase: string; offset: number; target_path: string };
  db.close();
  assert.equal(cp.phase, 'copy');
  assert.ok(cp.offset > 0 && cp.offset < bytes.length);
  assert.ok(existsSync(oldPath), 'the source stays until the swap');
  s = await startServe(limits);
  try {
    const job = await waitJob(client(s.base), m.json.job.id);
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error) + s.stderr());
    assert.equal(job.result.resumed_from, cp.offset, 'continued from the committed chunk');
    assert.equal(job.result.attempts, 2);
    const v = (await client(s.base)('GET', `/v1/volumes/${r.json.volume.id}`, { who: 'admin' })).json.volume;
    assert.equal(v.format, 'luks1');
    assert.equal(v.path, cp.target_path);
    assert.equal(v.status, 'available');
  } finally {
    await stop(s.child);
  }
  assert.ok(!existsSync(oldPath), 'the old file is removed after the swap');
  assert.ok((await readVolume(env.state, r.json.volume.id)).equals(bytes));
});

test('serve refuses --role api|worker and --heartbeat-timeout without --database, and a bad --role', () => {
  const base = ['serve', '--listen', '127.0.0.1:1', '--state', join(env.dir, 'refused'), '--tokens', env.tokensFile];
  for (const extra of [['--role', 'api'], ['--role', 'worker'], ['--heartbeat-timeout', '5'], ['--role', 'both', '--database', 'postgresql://x@127.0.0.1:1/x']]) {
    const r = runCli([...base, ...extra], { env: { BRICKCRYPT_DATABASE: '' } });
    assert.equal(r.status, 1, `${extra.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /role|heartbeat-timeout/);
  }
  assert.ok(!existsSync(join(env.dir, 'refused', 'state.db')), 'nothing was created');
});
