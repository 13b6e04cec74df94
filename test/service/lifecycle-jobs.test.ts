/**
 * The lifecycle actions of the service: `resize` (grow, shrink refused without allow_truncate,
 * shrink with it) and `reencrypt` (in-place re-key of a LUKS2 volume under a new managed key),
 * checked against the plaintext on disk and the keystore; and a real `brickcrypt serve` killed
 * with SIGKILL in the middle of a reencryption, restarted, finishing from the volume's on-disk
 * reencryption state with exactly the original plaintext; and both jobs with the state in a real
 * PostgreSQL (skipped without scripts/servers/postgresql.sh).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createService, type Service } from '../../src/service/app.js';
import { loadTokensFile } from '../../src/service/caller-identity.js';
import { passphraseOfKey } from '../../src/service/volume-files.js';
import { StateDb } from '../../src/service/state-db.js';
import { openKeyManager } from '../../src/keys/open-key-manager.js';
import { FileDevice } from '../../src/devices/file-device.js';
import { LuksVolume } from '../../src/luks/index.js';
import { runCli, whichTool } from '../helpers/tools.js';
import { freshDatabase, postgresServer } from '../helpers/postgres-server.js';
import { ADMIN, FAST_LUKS, client, setupState, startServeProcess, stopProcess, volumePlaintext, waitFor, waitJob, type Call, type ServeProcess } from './service-helpers.js';

const execFileP = promisify(execFile);

let env: ReturnType<typeof setupState>;
let service: Service;
let call: Call;

before(async () => {
  env = setupState();
  service = await createService({ stateDir: env.state, identity: { tokens: loadTokensFile(env.tokensFile), trustProxyIdentity: true }, maxJobs: 8, imageDirs: [env.dir] });
  await service.start();
  call = client(await service.app.listen({ host: '127.0.0.1', port: 0 }));
});

after(async () => {
  await service?.close();
  env?.cleanup();
});

const plaintext = (id: string): Promise<Buffer> => volumePlaintext(service.db.volume(id)!, service.keys);

/** A volume filled with random bytes from an image file. */
async function volumeWith(name: string, format: string, bytes: Buffer, extra: Record<string, unknown> = {}) {
  const image = join(env.dir, `${name}.raw`);
  writeFileSync(image, bytes);
  const r = await call('POST', '/v1/volumes', { who: 'admin', body: { name, format, source: { image_file: image }, ...(format === 'raw' ? {} : { luks: FAST_LUKS }), ...extra } });
  assert.equal(r.status, 202, r.text);
  assert.equal((await waitJob(call, r.json.job.id)).state, 'succeeded');
  return service.db.volume(r.json.volume.id)!;
}

const action = (id: string, body: unknown, who: 'admin' | 'creator' = 'admin') => call('POST', `/v1/volumes/${id}/actions`, { who, body });
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

async function runAction(id: string, body: unknown, who: 'admin' | 'creator' = 'admin') {
  const r = await action(id, body, who);
  assert.equal(r.status, 202, r.text);
  return waitJob(call, r.json.job.id, who);
}

test('resize grows a LUKS2 volume: the old plaintext stays, the new space reads as zeros, the record has the new size', async () => {
  const bytes = randomBytes(4 << 20);
  const v = await volumeWith('grow', 'luks2', bytes);
  const job = await runAction(v.id, { resize: { size: '16M' } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.old_size, 4 << 20);
  assert.equal(job.result.new_size, 16 << 20);
  assert.equal(job.result.zeroed_bytes, 12 << 20);
  const after = service.db.volume(v.id)!;
  assert.equal(after.size, 16 << 20);
  assert.equal(after.status, 'available');
  const plain = await plaintext(v.id);
  assert.equal(plain.length, 16 << 20);
  assert.ok(plain.subarray(0, 4 << 20).equals(bytes));
  assert.ok(plain.subarray(4 << 20).equals(Buffer.alloc(12 << 20)));
  const cryptsetup = whichTool('cryptsetup');
  if (cryptsetup) {
    const { stdout } = await execFileP(cryptsetup, ['luksDump', after.path]);
    // cryptsetup reads the grown header: a dynamic segment spans the grown file.
    assert.match(stdout, /length: \(whole device\)/);
  }
});

test('resize without allow_truncate refuses to shrink (400 SHRINK_REFUSED, nothing changed); with it the volume shrinks', async () => {
  const bytes = randomBytes(8 << 20);
  const v = await volumeWith('shrink', 'luks2', bytes);
  const before = sha(v.path);
  const r = await action(v.id, { resize: { size: 4 << 20 } });
  assert.equal(r.status, 400, r.text);
  assert.equal(r.json.error.code, 'SHRINK_REFUSED');
  assert.equal(sha(v.path), before, 'the volume file is untouched');
  assert.equal(service.db.volume(v.id)!.size, 8 << 20);
  assert.equal(service.db.volume(v.id)!.status, 'available');
  const job = await runAction(v.id, { resize: { size: '4M', allow_truncate: true } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(service.db.volume(v.id)!.size, 4 << 20);
  assert.ok((await plaintext(v.id)).equals(bytes.subarray(0, 4 << 20)));
});

test('resize of a raw volume: grown with zeros, shrink refused then allowed; bad bodies are 400', async () => {
  const bytes = randomBytes(1 << 20);
  const v = await volumeWith('raw-resize', 'raw', bytes);
  assert.equal((await runAction(v.id, { resize: { size: '2M' } })).state, 'succeeded');
  assert.equal(statSync(v.path).size, 2 << 20);
  assert.ok(readFileSync(v.path).equals(Buffer.concat([bytes, Buffer.alloc(1 << 20)])));
  assert.equal((await action(v.id, { resize: { size: 4096 } })).json.error.code, 'SHRINK_REFUSED');
  assert.equal((await runAction(v.id, { resize: { size: 4096, allow_truncate: true } })).state, 'succeeded');
  assert.ok(readFileSync(v.path).equals(bytes.subarray(0, 4096)));
  assert.equal(service.db.volume(v.id)!.size, 4096);
  for (const body of [{ resize: {} }, { resize: { size: 'lots' } }, { resize: { size: 4096, extra: 1 } }]) {
    const r = await action(v.id, body);
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
  }
});

test('reencrypt re-keys a LUKS2 volume in place: same plaintext, new volume key and cipher settings, the record names the new managed key, the old key is deleted', async () => {
  const bytes = randomBytes(6 << 20);
  const v = await volumeWith('rekey', 'luks2', bytes);
  const oldKey = v.encryption_key_id!;
  const oldMk = await volumeKeyOf(v.path, oldKey);
  const job = await runAction(v.id, { reencrypt: { sector_size: 512, resilience: 'journal', luks: FAST_LUKS } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const after = service.db.volume(v.id)!;
  assert.notEqual(after.encryption_key_id, oldKey);
  assert.equal(job.result.new_key_id, after.encryption_key_id);
  assert.equal(job.result.old_key_id, oldKey);
  assert.equal(job.result.sector_size, 512);
  assert.equal(job.result.resilience, 'journal');
  assert.equal(job.result.rewritten_bytes, 6 << 20);
  assert.equal(after.status, 'available');
  await assert.rejects(service.keys.get(ADMIN, oldKey), /NOT_FOUND|not found|no key/i, 'the key the service had made is deleted');
  const newMk = await volumeKeyOf(after.path, after.encryption_key_id!);
  assert.notEqual(newMk, oldMk, 'a new volume key');
  assert.ok((await plaintext(v.id)).equals(bytes));
  const cryptsetup = whichTool('cryptsetup');
  if (cryptsetup) {
    const { stdout } = await execFileP(cryptsetup, ['luksDump', after.path]);
    assert.match(stdout, /sector: 512 \[bytes\]/);
    assert.doesNotMatch(stdout, /online-reencrypt/);
  }
});

test('reencrypt onto an existing key {id}: the record names it, it stays the caller\'s (not owned by the volume)', async () => {
  const bytes = randomBytes(2 << 20);
  const v = await volumeWith('rekey-id', 'luks2', bytes);
  const { id } = await service.keys.createKey(ADMIN, { algorithm: 'aes', bitLength: 256, name: 'mine' });
  const job = await runAction(v.id, { reencrypt: { key: { id }, luks: FAST_LUKS } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(service.db.volume(v.id)!.encryption_key_id, id);
  assert.equal(service.db.volume(v.id)!.key_owned, false);
  assert.ok((await plaintext(v.id)).equals(bytes));
  // The volume is deleted: a key it does not own stays.
  assert.equal((await call('DELETE', `/v1/volumes/${v.id}`, { who: 'admin' })).status, 204);
  assert.equal((await service.keys.get(ADMIN, id)).id, id);
});

test('reencrypt refusals: encrypt of a LUKS volume and decrypt of a raw one 400, decrypt with key options 400, unknown fields 400; nothing is changed', async () => {
  const raw = await volumeWith('re-raw', 'raw', randomBytes(4096));
  const luks1 = await volumeWith('re-l1', 'luks1', randomBytes(1 << 20));
  const luks2 = await volumeWith('re-l2', 'luks2', randomBytes(1 << 20));
  const before = sha(luks2.path);
  const rawBefore = sha(raw.path);
  for (const [vol, body, status] of [
    [luks2, { mode: 'encrypt' }, 400],
    [raw, { mode: 'decrypt' }, 400],
    [raw, {}, 400],
    [luks2, { mode: 'decrypt', cipher: 'aes-xts-plain64' }, 400],
    [luks2, { mode: 'shuffle' }, 400],
    [luks2, { hotzone: 1 }, 400],
    [luks2, { resilience: 'datashift' }, 400],
  ] as const) {
    const r = await action(vol.id, { reencrypt: body });
    assert.equal(r.status, status, `${JSON.stringify(body)}: ${r.text}`);
  }
  assert.equal(sha(luks2.path), before);
  assert.equal(sha(raw.path), rawBefore);
  assert.equal(service.db.volume(luks2.id)!.status, 'available');
  assert.equal(service.db.volume(raw.id)!.status, 'available');
});

test('reencrypt mode encrypt: a raw volume becomes LUKS2 in place under a new managed key, same plaintext and usable size; cryptsetup opens it', async () => {
  const bytes = randomBytes(8 << 20);
  const v = await volumeWith('enc-in-place', 'raw', bytes);
  const job = await runAction(v.id, { reencrypt: { mode: 'encrypt', luks: FAST_LUKS } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const after = service.db.volume(v.id)!;
  assert.equal(after.format, 'luks2');
  assert.equal(after.status, 'available');
  assert.equal(after.size, bytes.length);
  assert.equal(after.encryption_key_id, job.result.new_key_id);
  assert.equal(after.key_owned, true);
  assert.equal(after.cipher, 'aes-xts-plain64');
  assert.ok((await plaintext(v.id)).equals(bytes), 'the plaintext is the raw volume\'s');
  assert.ok(!readFileSync(v.path).includes(bytes.subarray(0, 4096)), 'no plaintext block is left in the file');
  const cryptsetup = whichTool('cryptsetup');
  if (cryptsetup) {
    const passFile = await passphraseFile(after.encryption_key_id!, 'enc-in-place.pass');
    await execFileP(cryptsetup, ['open', '--test-passphrase', '--disable-locks', '--key-file', passFile, v.path]);
  }
});

test('reencrypt mode encrypt with format luks1: a raw volume becomes LUKS1 in place (payload at 2 MiB, 512-byte sectors), same plaintext; LUKS1-impossible options are 400', async () => {
  const bytes = randomBytes(4 << 20);
  const v = await volumeWith('enc-l1', 'raw', bytes);
  const before = sha(v.path);
  for (const body of [
    { mode: 'encrypt', format: 'luks1', sector_size: 4096 },
    { mode: 'encrypt', format: 'luks1', luks: { pbkdf: 'argon2id' } },
    { mode: 'encrypt', format: 'luks3' },
    { mode: 'decrypt', format: 'luks1' },
  ]) {
    const r = await action(v.id, { reencrypt: body });
    assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
  }
  assert.equal(sha(v.path), before);
  const job = await runAction(v.id, { reencrypt: { mode: 'encrypt', format: 'luks1', luks: FAST_LUKS } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.format, 'luks1');
  assert.equal(job.result.data_offset, 2 << 20);
  const after = service.db.volume(v.id)!;
  assert.deepEqual({ format: after.format, status: after.status, size: after.size, cipher: after.cipher }, { format: 'luks1', status: 'available', size: bytes.length, cipher: 'aes-xts-plain64' });
  assert.equal(readFileSync(v.path).readUInt16BE(6), 1, 'LUKS version 1');
  assert.equal(statSync(v.path).size, bytes.length + (2 << 20));
  assert.ok((await plaintext(v.id)).equals(bytes));
  const cryptsetup = whichTool('cryptsetup');
  if (cryptsetup) {
    const passFile = await passphraseFile(after.encryption_key_id!, 'enc-l1.pass');
    await execFileP(cryptsetup, ['open', '--test-passphrase', '--disable-locks', '--key-file', passFile, v.path]);
    assert.match((await execFileP(cryptsetup, ['luksDump', '--disable-locks', v.path])).stdout, /^Version:\s+1$/m);
  }
});

test('reencrypt mode encrypt to luks1 cancelled mid-way: the volume is in error, {resume: true} finishes it as LUKS1', async () => {
  const bytes = randomBytes(48 << 20);
  const v = await volumeWith('enc-l1-cancel', 'raw', bytes);
  const r = await action(v.id, { reencrypt: { mode: 'encrypt', format: 'luks1', hotzone_size: '256K', luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  await waitFor(call, r.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done > 0);
  assert.ok((await call('POST', `/v1/jobs/${r.json.job.id}/cancel`, { who: 'admin' })).status < 300);
  const cancelled = await waitJob(call, r.json.job.id);
  assert.equal(cancelled.state, 'cancelled', JSON.stringify(cancelled));
  assert.equal(service.db.volume(v.id)!.status, 'error');
  assert.equal(service.db.volume(v.id)!.format, 'raw');
  const job = await runAction(v.id, { reencrypt: { resume: true } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.resumed, true);
  const after = service.db.volume(v.id)!;
  assert.equal(after.format, 'luks1');
  assert.ok((await plaintext(v.id)).equals(bytes));
});

test('reencrypt mode decrypt: a LUKS2 volume becomes raw in place, the file holds exactly the plaintext, the key the service made is deleted', async () => {
  const bytes = randomBytes(8 << 20);
  const v = await volumeWith('dec-in-place', 'luks2', bytes);
  const job = await runAction(v.id, { reencrypt: { mode: 'decrypt' } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const after = service.db.volume(v.id)!;
  assert.deepEqual({ format: after.format, key: after.encryption_key_id, cipher: after.cipher, status: after.status, size: after.size }, { format: 'raw', key: null, cipher: null, status: 'available', size: bytes.length });
  assert.ok(readFileSync(v.path).equals(bytes), 'the file is exactly the plaintext');
  assert.ok(!(await service.keys.list(ADMIN)).some((k) => k.id === v.encryption_key_id), 'the old key is deleted');
});

test('reencrypt mode decrypt of a LUKS1 volume: raw in place, exactly the plaintext', async () => {
  const bytes = randomBytes(4 << 20);
  const v = await volumeWith('l1-decrypt', 'luks1', bytes);
  const job = await runAction(v.id, { reencrypt: { mode: 'decrypt' } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(service.db.volume(v.id)!.format, 'raw');
  assert.ok(readFileSync(v.path).equals(bytes), 'the file is exactly the plaintext');
});

test('reencrypt of a LUKS1 volume: re-keyed in place, still LUKS1, same plaintext, the record names the new key', async () => {
  const bytes = randomBytes(4 << 20);
  const v = await volumeWith('l1-rekey', 'luks1', bytes);
  const job = await runAction(v.id, { reencrypt: { luks: FAST_LUKS } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  const after = service.db.volume(v.id)!;
  assert.equal(after.format, 'luks1');
  assert.notEqual(after.encryption_key_id, v.encryption_key_id);
  assert.equal(readFileSync(v.path).subarray(0, 6).toString('latin1'), 'LUKS\xba\xbe');
  assert.equal(readFileSync(v.path).readUInt16BE(6), 1, 'LUKS version 1');
  assert.ok((await plaintext(v.id)).equals(bytes));
});

test('reencrypt mode encrypt cancelled mid-way: the volume is in error, {resume: true} finishes it with the same key and plaintext', async () => {
  const bytes = randomBytes(48 << 20);
  const v = await volumeWith('enc-cancel', 'raw', bytes);
  // 256 KiB zones: the cancel is honoured at the next zone boundary, long before the end.
  const r = await action(v.id, { reencrypt: { mode: 'encrypt', hotzone_size: '256K', luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  await waitFor(call, r.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done > 0);
  assert.ok((await call('POST', `/v1/jobs/${r.json.job.id}/cancel`, { who: 'admin' })).status < 300);
  const cancelled = await waitJob(call, r.json.job.id);
  assert.equal(cancelled.state, 'cancelled', JSON.stringify(cancelled));
  assert.equal(service.db.volume(v.id)!.status, 'error');
  assert.equal(service.db.volume(v.id)!.format, 'raw', 'the record changes only when the encryption is done');
  const job = await runAction(v.id, { reencrypt: { resume: true } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.mode, 'encrypt');
  assert.equal(job.result.resumed, true);
  const after = service.db.volume(v.id)!;
  assert.equal(after.format, 'luks2');
  assert.equal(after.status, 'available');
  assert.ok((await plaintext(v.id)).equals(bytes));
});

test('reencrypt by a creator (may create keys, not read them) fails FORBIDDEN; the volume and its key are as before, the new key is gone', async () => {
  const r = await call('POST', '/v1/volumes', { who: 'creator', body: { name: 'by-creator', format: 'luks2', size: 1 << 20, luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  assert.equal((await waitJob(call, r.json.job.id, 'creator')).state, 'succeeded');
  const v = service.db.volume(r.json.volume.id)!;
  const before = sha(v.path);
  const keysBefore = (await service.keys.list(ADMIN)).length;
  const job = await runAction(v.id, { reencrypt: { luks: FAST_LUKS } }, 'creator');
  assert.equal(job.state, 'failed');
  assert.equal(job.error.code, 'FORBIDDEN');
  assert.equal(sha(v.path), before);
  const after = service.db.volume(v.id)!;
  assert.equal(after.status, 'available');
  assert.equal(after.encryption_key_id, v.encryption_key_id);
  assert.equal((await service.keys.list(ADMIN)).length, keysBefore, 'the key the job made was deleted');
});

test('a reencrypt cancelled mid-way leaves the volume in error with a resumable, cryptsetup-format state that the CLI finishes with the old key', async () => {
  const bytes = randomBytes(48 << 20);
  const v = await volumeWith('cancel', 'luks2', bytes);
  const keysBefore = new Set((await service.keys.list(ADMIN)).map((k) => k.id));
  const r = await action(v.id, { reencrypt: { resilience: 'journal', luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  await waitFor(call, r.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done > 0);
  assert.equal((await call('POST', `/v1/jobs/${r.json.job.id}/cancel`, { who: 'admin' })).status < 300, true);
  const job = await waitJob(call, r.json.job.id);
  assert.equal(job.state, 'cancelled', JSON.stringify(job));
  const after = service.db.volume(v.id)!;
  assert.equal(after.status, 'error');
  assert.equal(after.encryption_key_id, v.encryption_key_id, 'the record still names the old key');
  const file = await FileDevice.open(v.path, { readOnly: true });
  const fence = (await LuksVolume.open(file, { readOnly: true })).payloadFence?.code;
  await file.close();
  assert.equal(fence, 'REENCRYPTION_IN_PROGRESS');
  const made = (await service.keys.list(ADMIN)).filter((k) => !keysBefore.has(k.id));
  assert.equal(made.length, 1, 'the new key the job made is kept (the state on disk is part of its run)');
  // The old key's passphrase finishes it (as cryptsetup reencrypt --resume-only would).
  const passFile = await passphraseFile(v.encryption_key_id!, 'cancel.pass');
  const cli = runCli(['reencrypt', '--resume-only', v.path, '--key-file', passFile, '--workers', '0']);
  assert.equal(cli.status, 0, cli.stderr);
  assert.ok((await plaintext(v.id)).equals(bytes));
});

test('a reencrypt cancelled mid-way is resumed by {resume: true}: the job continues the recorded state, the record names the new key, the old key is deleted', async () => {
  const bytes = randomBytes(48 << 20);
  const v = await volumeWith('resume', 'luks2', bytes);
  // Refusals before there is anything to resume: resume needs status error; other fields are not taken with it.
  assert.equal((await action(v.id, { reencrypt: { resume: true } })).status, 409);
  const r = await action(v.id, { reencrypt: { resilience: 'journal', luks: FAST_LUKS } });
  assert.equal(r.status, 202, r.text);
  await waitFor(call, r.json.job.id, (j) => j.state === 'running' && j.progress.bytes_done > 0);
  assert.ok((await call('POST', `/v1/jobs/${r.json.job.id}/cancel`, { who: 'admin' })).status < 300);
  assert.equal((await waitJob(call, r.json.job.id)).state, 'cancelled');
  assert.equal(service.db.volume(v.id)!.status, 'error');
  const keysBefore = new Set((await service.keys.list(ADMIN)).map((k) => k.id));
  // A plain reencrypt request on the volume in error is refused and points at resume.
  const plain = await action(v.id, { reencrypt: {} });
  assert.equal(plain.status, 409, plain.text);
  assert.match(plain.json.error.message, /resume/);
  assert.equal((await action(v.id, { reencrypt: { resume: true, cipher: 'aes-xts-plain64' } })).status, 400);
  const job = await runAction(v.id, { reencrypt: { resume: true } });
  assert.equal(job.state, 'succeeded', JSON.stringify(job));
  assert.equal(job.result.resumed, true);
  assert.equal(job.result.old_key_id, v.encryption_key_id);
  const after = service.db.volume(v.id)!;
  assert.equal(after.status, 'available');
  assert.equal(after.encryption_key_id, job.result.new_key_id);
  assert.ok(keysBefore.has(after.encryption_key_id!), 'the new key is the one the cancelled job made');
  assert.ok(!(await service.keys.list(ADMIN)).some((k) => k.id === v.encryption_key_id), 'the old key the service made is deleted');
  assert.ok((await plaintext(v.id)).equals(bytes));
  const file = await FileDevice.open(v.path, { readOnly: true });
  const fence = (await LuksVolume.open(file, { readOnly: true })).payloadFence;
  await file.close();
  assert.equal(fence, undefined, 'no reencryption is recorded any more');
  // Nothing is left to resume.
  assert.equal((await action(v.id, { reencrypt: { resume: true } })).status, 409);
});

test('openapi.json describes the resize and reencrypt bodies', async () => {
  const doc = (await call('GET', '/openapi.json')).json;
  const actions = doc.paths['/v1/volumes/{id}/actions'].post.requestBody.content['application/json'].schema.properties;
  assert.deepEqual(Object.keys(actions.resize.properties).sort(), ['allow_truncate', 'size']);
  assert.deepEqual(actions.resize.required, ['size']);
  assert.deepEqual(Object.keys(actions.reencrypt.properties).sort(), ['cipher', 'format', 'hotzone_size', 'key', 'key_size', 'luks', 'mode', 'resilience', 'resume', 'sector_size']);
  assert.deepEqual(actions.reencrypt.properties.mode.enum, ['reencrypt', 'encrypt', 'decrypt']);
});

/** A file under the test directory holding managed key `keyId`'s LUKS passphrase (for cryptsetup and the CLI). */
async function passphraseFile(keyId: string, name: string): Promise<string> {
  const pass = await passphraseOfKey(service.keys, ADMIN, keyId);
  const file = join(env.dir, name);
  writeFileSync(file, Buffer.from(pass.expose()));
  pass.wipe();
  return file;
}

/** The volume key (hex) that managed key `keyId`'s passphrase unlocks: changes when the volume is re-keyed. */
async function volumeKeyOf(path: string, keyId: string): Promise<string> {
  const pass = await passphraseOfKey(service.keys, ADMIN, keyId);
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const { key } = await (await LuksVolume.open(file, { readOnly: true })).unlock(pass);
    try {
      return Buffer.from(key.expose()).toString('hex');
    } finally {
      key.wipe();
    }
  } finally {
    pass.wipe();
    await file.close();
  }
}

// --- kill -9 of a real serve process in the middle of a reencryption ---

const proc = setupState();
after(() => proc.cleanup());
const startServe = (on: ReturnType<typeof setupState> = proc, extra: string[] = []): Promise<ServeProcess> =>
  startServeProcess(['--state', on.state, '--tokens', on.tokensFile, '--image-dir', on.dir, ...extra]);
const kill9 = (child: ChildProcess): Promise<void> => stopProcess(child, 'SIGKILL');

test('kill -9 of serve mid-reencrypt, restart: the job continues from the on-disk reencryption state and the plaintext is exactly the original', async () => {
  mkdirSync(proc.state, { recursive: true, mode: 0o700 });
  const bytes = randomBytes(96 << 20);
  const image = join(proc.dir, 'src.raw');
  writeFileSync(image, bytes);
  let serve = await startServe();
  try {
    const c = await serve.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'big', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
    assert.equal(c.status, 202, c.text);
    assert.equal((await waitJob(serve.call, c.json.job.id)).state, 'succeeded');
    const volumeId = c.json.volume.id as string;
    const oldKey = c.json.volume.encryption_key_id as string;
    // journal: the hot zone is what the resilience area holds (a few MiB), so there are many zones.
    const r = await serve.call('POST', `/v1/volumes/${volumeId}/actions`, { who: 'admin', body: { reencrypt: { resilience: 'journal', luks: FAST_LUKS } } });
    assert.equal(r.status, 202, r.text);
    const jobId = r.json.job.id as string;
    const seen = await waitFor(serve.call, jobId, (j) => j.state === 'running' && j.progress.bytes_done > 0, 60_000);
    await kill9(serve.child);
    assert.ok(seen.progress.bytes_done < 96 << 20, `killed part-way (${seen.progress.bytes_done} bytes done)`);
    const db = new StateDb(join(proc.state, 'state.db'));
    const path = db.volume(volumeId)!.path;
    db.close();
    // The header records an unfinished reencryption (cryptsetup's requirement flag) when killed.
    const file = await FileDevice.open(path, { readOnly: true });
    const mid = (await LuksVolume.open(file, { readOnly: true })).payloadFence?.code;
    await file.close();
    serve = await startServe();
    const job = await waitJob(serve.call, jobId, 'admin', 180_000);
    assert.equal(job.state, 'succeeded', JSON.stringify(job));
    assert.equal(job.result.runs, 2, 'the killed run was followed by a second one');
    assert.equal(mid, 'REENCRYPTION_IN_PROGRESS', 'killed with a reencryption recorded on disk');
    assert.equal(job.result.resumed, true, JSON.stringify(job.result));
    assert.ok(job.result.rewritten_bytes > 0 && job.result.rewritten_bytes < 96 << 20, `the second run rewrote only what was left: ${job.result.rewritten_bytes}`);
    const v = (await serve.call('GET', `/v1/volumes/${volumeId}`, { who: 'admin' })).json.volume;
    assert.notEqual(v.encryption_key_id, oldKey);
    assert.equal(v.status, 'available');
    await kill9(serve.child);
    const km = await openKeyManager(`local:${join(proc.state, 'keystore.db')}`);
    try {
      const buf = await volumePlaintext({ ...v, path }, km);
      assert.equal(buf.length, bytes.length);
      assert.ok(buf.equals(bytes), 'the plaintext is the original, byte for byte');
    } finally {
      await km.close();
    }
  } finally {
    await kill9(serve.child);
  }
});

// --- the same jobs with the state in PostgreSQL (scripts/servers/postgresql.sh) ---

const pgServer: { url: string } | { skip: string } = await postgresServer();

test('on PostgreSQL: resize and reencrypt run as jobs of a worker, the volume row follows', { skip: 'skip' in pgServer ? pgServer.skip : false }, async () => {
  const pg = setupState();
  const database = await freshDatabase((pgServer as { url: string }).url, 'lifecycle');
  mkdirSync(pg.state, { recursive: true, mode: 0o700 });
  const serve = await startServe(pg, ['--database', database.url]);
  try {
    const bytes = randomBytes(3 << 20);
    const image = join(pg.dir, 'pg.raw');
    writeFileSync(image, bytes);
    const c = await serve.call('POST', '/v1/volumes', { who: 'admin', body: { name: 'pg', format: 'luks2', source: { image_file: image }, luks: FAST_LUKS } });
    assert.equal(c.status, 202, c.text);
    assert.equal((await waitJob(serve.call, c.json.job.id)).state, 'succeeded');
    const id = c.json.volume.id as string;
    const act = async (body: unknown) => {
      const r = await serve.call('POST', `/v1/volumes/${id}/actions`, { who: 'admin', body });
      assert.equal(r.status, 202, r.text);
      return waitJob(serve.call, r.json.job.id);
    };
    assert.equal((await serve.call('POST', `/v1/volumes/${id}/actions`, { who: 'admin', body: { resize: { size: '1M' } } })).json.error.code, 'SHRINK_REFUSED');
    const resized = await act({ resize: { size: '8M' } });
    assert.equal(resized.state, 'succeeded', JSON.stringify(resized));
    const re = await act({ reencrypt: { luks: FAST_LUKS } });
    assert.equal(re.state, 'succeeded', JSON.stringify(re));
    const v = (await serve.call('GET', `/v1/volumes/${id}`, { who: 'admin' })).json.volume;
    assert.equal(v.size, 8 << 20);
    assert.equal(v.encryption_key_id, re.result.new_key_id);
    assert.notEqual(v.encryption_key_id, c.json.volume.encryption_key_id);
    await kill9(serve.child);
    const km = await openKeyManager(`local:${join(pg.state, 'keystore.db')}`);
    try {
      assert.ok((await volumePlaintext(v, km)).equals(Buffer.concat([bytes, Buffer.alloc(5 << 20)])));
    } finally {
      await km.close();
    }
  } finally {
    await kill9(serve.child);
    await database.drop().catch(() => undefined);
    pg.cleanup();
  }
});
