/**
 * Where the test key servers started by `scripts/key-servers.sh start` listen.
 *
 * Read from BRICKCRYPT_TEST_* variables (`eval "$(scripts/key-servers.sh env)"`) or else from
 * the state file `servers.json` the script writes. Tests never start servers themselves:
 * locally a missing server skips loudly; under CI=true it is a failure.
 */
import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { inCI } from './tools.js';

export interface KmipTestServer {
  host: string;
  port: number;
  ca: string;
  cert: string;
  key: string;
  /** A second client identity (another certificate CN). */
  cert2: string;
  key2: string;
}

interface ServersJson {
  barbican?: { url?: string };
  kmip?: Partial<KmipTestServer>;
}

const stateDir = process.env.BRICKCRYPT_KEY_SERVERS_DIR ?? '/tmp/brickcrypt-key-servers';

function stateFile(): ServersJson {
  const p = join(stateDir, 'servers.json');
  if (!existsSync(p)) return {};
  try {
    return JSON.parse(readFileSync(p, 'utf8')) as ServersJson;
  } catch {
    return {};
  }
}

function reachable(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(2000, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

function absent(what: string): string {
  const message = `${what} is not running — start it with: bash scripts/key-servers.sh start (scripts/test.sh does)`;
  if (inCI) throw new Error(`${message} (CI=true makes a missing key server a failure)`);
  process.stderr.write(`\n*** SKIPPING key-server test: ${message} ***\n`);
  return message;
}

/** The Barbican endpoint, or a skip reason (throws under CI). */
export async function barbicanServer(): Promise<{ url: string } | { skip: string }> {
  const url = process.env.BRICKCRYPT_TEST_BARBICAN_URL ?? stateFile().barbican?.url;
  if (url) {
    const u = new URL(url);
    if (await reachable(u.hostname, Number(u.port || 80))) return { url };
  }
  return { skip: absent(`Barbican test server${url ? ` at ${url}` : ''}`) };
}

/** The PyKMIP server and client certificate paths, or a skip reason (throws under CI). */
export async function kmipServer(): Promise<KmipTestServer | { skip: string }> {
  const j = stateFile().kmip ?? {};
  const env = process.env;
  const cfg = {
    host: env.BRICKCRYPT_TEST_KMIP_HOST ?? j.host,
    port: Number(env.BRICKCRYPT_TEST_KMIP_PORT ?? j.port ?? 0),
    ca: env.BRICKCRYPT_TEST_KMIP_CA ?? j.ca,
    cert: env.BRICKCRYPT_TEST_KMIP_CERT ?? j.cert,
    key: env.BRICKCRYPT_TEST_KMIP_KEY ?? j.key,
    cert2: env.BRICKCRYPT_TEST_KMIP_CERT2 ?? j.cert2,
    key2: env.BRICKCRYPT_TEST_KMIP_KEY2 ?? j.key2,
  };
  if (cfg.host && cfg.port && cfg.ca && cfg.cert && cfg.key && cfg.cert2 && cfg.key2 && (await reachable(cfg.host, cfg.port))) {
    return cfg as KmipTestServer;
  }
  return { skip: absent(`PyKMIP test server${cfg.host ? ` at ${cfg.host}:${cfg.port}` : ''}`) };
}
