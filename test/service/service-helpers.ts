/** Shared set-up of the service tests: a state directory, a tokens file, request helpers. */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { cliPath, tempDir } from '../helpers/tools.js';
import { openObjectStore } from '../../src/backup/object-store.js';
import { Repository } from '../../src/backup/repository.js';
import type { CallerIdentity, KeyManager } from '../../src/keys/key-manager.js';
import { openVolumeFile, passphraseOfKey } from '../../src/service/volume-files.js';
import type { VolumeFormat } from '../../src/service/state-db.js';

export const TOKENS = {
  admin: { token: 'admin-token-p1', user: 'alice', project: 'p1', roles: ['admin'] },
  creator: { token: 'creator-token-p1', user: 'cinder', project: 'p1', roles: ['creator'] },
  reader: { token: 'reader-token-p1', user: 'nova', project: 'p1', roles: ['reader'] },
  other: { token: 'member-token-p2', user: 'bob', project: 'p2', roles: ['member'] },
} as const;

export type Who = keyof typeof TOKENS;

/** Cheap keyslots: tests never wait for a real KDF. */
export const FAST_LUKS = { pbkdf: 'pbkdf2', pbkdf_iterations: 1000 } as const;

export function setupState(): { dir: string; state: string; tokensFile: string; cleanup: () => void } {
  const tmp = tempDir('brickcrypt-service-');
  const tokensFile = join(tmp.dir, 'tokens.json');
  writeFileSync(tokensFile, JSON.stringify(Object.fromEntries(Object.values(TOKENS).map((t) => [t.token, { user: t.user, project: t.project, roles: t.roles }]))));
  return { dir: tmp.dir, state: join(tmp.dir, 'state'), tokensFile, cleanup: tmp.cleanup };
}

/** A small HTTP client against a base URL. */
export function client(base: string) {
  return async function call(method: string, path: string, options: { who?: Who; body?: unknown; headers?: Record<string, string> } = {}) {
    const headers: Record<string, string> = { ...(options.headers ?? {}) };
    if (options.who) headers.authorization = `Bearer ${TOKENS[options.who].token}`;
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(base + path, { method, headers, ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}) });
    const text = await r.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: r.status, json, text, headers: r.headers };
  };
}

export type Call = ReturnType<typeof client>;

/** Polls a job until it is no longer queued or running. */
export async function waitJob(call: Call, id: string, who: Who = 'admin', timeoutMs = 60_000): Promise<any> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const r = await call('GET', `/v1/jobs/${id}`, { who });
    assert.equal(r.status, 200, r.text);
    if (r.json.job.state !== 'queued' && r.json.job.state !== 'running') return r.json.job;
    if (Date.now() > until) throw new Error(`job ${id} still ${r.json.job.state}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Polls until `pred` holds for the job (e.g. some progress was committed). */
export async function waitFor(call: Call, id: string, pred: (job: any) => boolean, timeoutMs = 60_000): Promise<any> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const r = await call('GET', `/v1/jobs/${id}`, { who: 'admin' });
    if (r.status === 200 && pred(r.json.job)) return r.json.job;
    if (Date.now() > until) throw new Error(`job ${id}: condition not met (${r.text})`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

/** Creates a repository with a new backup key in `keys` (what `backup init` does). */
export async function initRepository(keys: KeyManager, uri: string, storeEnv: NodeJS.ProcessEnv = process.env): Promise<string> {
  const store = await openObjectStore(uri, storeEnv);
  const { id, key } = await keys.createKey(REPO_ADMIN, { algorithm: 'aes', bitLength: 256, name: `backup ${uri}` });
  try {
    const repo = await Repository.init(store, key, id, 64 * 1024);
    repo.close();
  } finally {
    key.wipe();
    await store.close();
  }
  return id;
}


const REPO_ADMIN = { user: TOKENS.admin.user, project: TOKENS.admin.project, roles: [...TOKENS.admin.roles] };

/** The admin caller of TOKENS, as the key manager sees it. */
export const ADMIN: CallerIdentity = REPO_ADMIN;

/** A loopback port nobody listens on right now (the OS picks it). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface ServeProcess {
  child: ChildProcess;
  base: string;
  call: Call;
  stderr: () => string;
}

/** Starts a real `brickcrypt serve --listen 127.0.0.1:PORT ...args` and waits until it listens. */
export async function startServeProcess(args: string[], label = 'serve'): Promise<ServeProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, [cliPath, 'serve', '--listen', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err += String(d)));
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += String(d);
      if (out.includes('listening on')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`${label} exited ${code}: ${err}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  return { child, base, call: client(base), stderr: () => err };
}

/** Sends `signal` to a child process (if it still runs) and waits for it to exit. */
export function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

/** The whole plaintext of a service volume, opened with its key from `keys` (as the admin). */
export async function volumePlaintext(v: { path: string; format: VolumeFormat; encryption_key_id?: string | null }, keys: KeyManager): Promise<Buffer> {
  const pass = v.format === 'raw' ? undefined : await passphraseOfKey(keys, ADMIN, v.encryption_key_id!);
  const opened = await openVolumeFile(v.path, v.format, { readOnly: true, ...(pass ? { passphrase: pass } : {}) });
  try {
    const buf = new Uint8Array(opened.device.size);
    await opened.device.read(buf, 0);
    return Buffer.from(buf);
  } finally {
    await opened.close();
  }
}
