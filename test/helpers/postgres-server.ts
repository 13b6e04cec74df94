/**
 * The PostgreSQL test server that `scripts/servers/postgresql.sh start` runs (scripts/test.sh
 * starts it). Read from BRICKCRYPT_TEST_POSTGRES_URL (`eval "$(scripts/servers/postgresql.sh env)"`),
 * else the script's `env` output. Locally a missing server skips loudly; under CI=true it is a
 * failure. Each test file gets a database of its own (`freshDatabase`).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import pg from 'pg';
import { inCI, repoRoot } from './tools.js';

const SCRIPT = join(repoRoot, 'scripts', 'servers', 'postgresql.sh');

function absent(message: string): string {
  if (inCI) throw new Error(`${message} (CI=true makes a missing PostgreSQL a failure)`);
  process.stderr.write(`\n*** SKIPPING PostgreSQL test: ${message} ***\n`);
  return message;
}

/** The server's URL (database brickcrypt_test), or a skip reason. */
export async function postgresServer(): Promise<{ url: string } | { skip: string }> {
  let url = process.env.BRICKCRYPT_TEST_POSTGRES_URL;
  if (!url) {
    try {
      const out = execFileSync('bash', [SCRIPT, 'env'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      url = /BRICKCRYPT_TEST_POSTGRES_URL='([^']+)'/.exec(out)?.[1];
    } catch {
      url = undefined;
    }
  }
  const hint = 'start it with: bash scripts/servers/postgresql.sh start (scripts/test.sh does)';
  if (!url) return { skip: absent(`the PostgreSQL test server is not running — ${hint}`) };
  const c = new pg.Client({ connectionString: url });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return { url };
  } catch (err) {
    return { skip: absent(`PostgreSQL at ${url} does not answer (${(err as Error).message}) — ${hint}`) };
  } finally {
    await c.end().catch(() => undefined);
  }
}

/** Creates an empty database for one test file; returns its URL and a function that drops it. */
export async function freshDatabase(serverUrl: string, label: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `${label}_${process.pid}_${Date.now().toString(36)}`.replace(/[^a-z0-9_]/gi, '_').toLowerCase();
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const u = new URL(serverUrl);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    drop: async () => {
      const c = new pg.Client({ connectionString: serverUrl });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
    },
  };
}
