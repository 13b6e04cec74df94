/**
 * The Glance v2 test server that `scripts/servers/glance.sh start` runs (scripts/test.sh
 * starts it), and a way to run a private one for a test that kills its server.
 *
 * Read from BRICKCRYPT_TEST_GLANCE_URL / BRICKCRYPT_TEST_GLANCE_STORE
 * (`eval "$(scripts/servers/glance.sh env)"`), else the script's defaults. Locally a missing
 * server skips loudly; under CI=true it is a failure.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import net from 'node:net';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inCI } from './tools.js';
import { GlanceClient } from '../../src/image-service/glance-client.js';

export interface GlanceTestServer {
  url: string;
  /** filesystem_store_datadir: the image files, named by image id. */
  store: string;
  dir: string;
}

const SCRIPT = resolve(dirname(fileURLToPath(import.meta.url)), '../../../scripts/servers/glance.sh');

export function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((done) => {
    const s = net.connect({ host, port });
    const end = (ok: boolean) => {
      s.destroy();
      done(ok);
    };
    s.setTimeout(2000, () => end(false));
    s.once('connect', () => end(true));
    s.once('error', () => end(false));
  });
}

function absent(message: string): string {
  if (inCI) throw new Error(`${message} (CI=true makes a missing image service a failure)`);
  process.stderr.write(`\n*** SKIPPING image-service test: ${message} ***\n`);
  return message;
}

/** The shared test Glance, or a skip reason (throws under CI). */
export async function glanceServer(): Promise<GlanceTestServer | { skip: string }> {
  const dir = process.env.BRICKCRYPT_TEST_GLANCE_DIR ?? '/tmp/brickcrypt-glance';
  const url = process.env.BRICKCRYPT_TEST_GLANCE_URL ?? 'http://127.0.0.1:9292';
  const store = process.env.BRICKCRYPT_TEST_GLANCE_STORE ?? join(dir, 'images');
  const u = new URL(url);
  if (await reachable(u.hostname, Number(u.port || 80))) return { url, store, dir };
  return { skip: absent(`Glance test server at ${url} is not running — start it with: bash scripts/servers/glance.sh start (scripts/test.sh does)`) };
}

/** True when Debian's python3-glance is installed (a private server can be started). */
export function glanceInstalled(): false | string {
  const r = spawnSync('/usr/bin/python3', ['-c', 'import glance.cmd.api, glance_store'], { stdio: 'ignore' });
  if (r.status === 0) return false;
  return absent('python3-glance is not installed — run bash scripts/servers/glance.sh start once');
}

/** Runs the server script on a private state directory and port (start|stop). */
export function privateGlance(action: 'start' | 'stop', dir: string, port: number, keepState = false): void {
  execFileSync('bash', [SCRIPT, action], {
    env: { ...process.env, BRICKCRYPT_GLANCE_DIR: dir, BRICKCRYPT_GLANCE_PORT: String(port), BRICKCRYPT_GLANCE_KEEP_STATE: keepState ? '1' : '0' },
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 120_000,
  });
}

/** A client acting as `user` of `project` through the header identity. */
export function glanceAs(url: string, project: string, user = `${project}-user`, roles: string[] = ['member'], attempts = 2): GlanceClient {
  return new GlanceClient({ url, identity: { user, project, roles }, attempts, baseDelayMs: 50 });
}

/** A project name no other test uses, so listings stay small and independent. */
export function uniqueProject(label: string): string {
  return `${label}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}
