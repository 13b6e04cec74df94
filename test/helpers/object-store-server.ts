/**
 * Where the test Swift (with s3api) started by `scripts/servers/object-store.sh start` listens:
 * the script's `env` output (credentials and URIs). Tests never start it themselves: locally a
 * missing server skips loudly; under CI=true it is a failure.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { inCI, repoRoot } from './tools.js';

export interface ObjectStoreServer {
  env: Record<string, string>;
  swiftUri: (container: string) => string;
  s3Uri: (bucket: string) => string;
}

let cached: ObjectStoreServer | string | undefined;

/** The running server, or a skip reason (throws under CI). */
export function objectStoreServer(): ObjectStoreServer | string {
  if (cached !== undefined) return cached;
  const script = join(repoRoot, 'scripts', 'servers', 'object-store.sh');
  const env: Record<string, string> = {};
  for (const line of execFileSync('bash', [script, 'env'], { encoding: 'utf8' }).split('\n')) {
    const m = /^export (\w+)=(.*)$/.exec(line);
    if (m) env[m[1]!] = m[2]!;
  }
  let up = false;
  try {
    execFileSync('bash', [script, 'status'], { stdio: 'ignore', timeout: 10_000 });
    up = true;
  } catch {
    up = false;
  }
  if (!up) {
    const message = 'the test Swift is not running — start it with: bash scripts/servers/object-store.sh start (scripts/test.sh does)';
    if (inCI) throw new Error(`${message} (CI=true makes a missing server a failure)`);
    process.stderr.write(`\n*** SKIPPING object-store test: ${message} ***\n`);
    cached = message;
    return cached;
  }
  cached = {
    env,
    swiftUri: (c) => `${env.BRICKCRYPT_TEST_SWIFT_URI}/${c}`,
    s3Uri: (b) => `${env.BRICKCRYPT_TEST_S3_URI}/${b}`,
  };
  return cached;
}

/** `skip` option value for node:test: false when the server runs, else the reason. */
export function needObjectStore(): false | string {
  const s = objectStoreServer();
  return typeof s === 'string' ? s : false;
}
