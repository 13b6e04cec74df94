/**
 * Test helpers for interop with real tools (cryptsetup, qemu-img, nbdinfo, ...).
 *
 * Locally a missing tool skips the test with a loud message; under `CI=true` a missing
 * tool is a failure, so CI can never go green by skipping interop.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const cache = new Map<string, string | null>();

export function whichTool(name: string): string | null {
  if (!cache.has(name)) {
    const r = spawnSync('bash', ['-c', `command -v ${name}`], { encoding: 'utf8' });
    const found = r.status === 0 ? r.stdout.trim() : '';
    cache.set(name, found || (existsSync(`/usr/sbin/${name}`) ? `/usr/sbin/${name}` : null));
  }
  return cache.get(name) ?? null;
}

export const inCI = process.env.CI === 'true';

/**
 * Returns `false` when every tool is there; otherwise a skip reason (locally) or throws (CI).
 * Use as `test('...', { skip: needTools('cryptsetup') }, async () => ...)`.
 */
export function needTools(...names: string[]): false | string {
  const missing = names.filter((n) => whichTool(n) === null);
  if (missing.length === 0) return false;
  const message = `MISSING TOOL(S): ${missing.join(', ')} — run scripts/install-test-tools.sh`;
  if (inCI) throw new Error(`${message} (CI=true makes a missing tool a failure)`);
  process.stderr.write(`\n*** SKIPPING interop test: ${message} ***\n`);
  return message;
}

/** Like `needTools`, for root privileges (loop devices, mounts): `false` when running as root. */
export function needRoot(purpose: string): false | string {
  if (process.getuid?.() === 0) return false;
  const message = `MISSING PRIVILEGE: root (${purpose})`;
  if (inCI) throw new Error(`${message} (CI=true makes this a failure)`);
  process.stderr.write(`\n*** SKIPPING: ${message} ***\n`);
  return message;
}

/** Runs a tool and returns stdout; throws with stderr on a non-zero exit. */
export function run(cmd: string, args: string[], options: { input?: string | Uint8Array; env?: NodeJS.ProcessEnv; timeout?: number } = {}): string {
  const path = whichTool(cmd) ?? cmd;
  return execFileSync(path, args, {
    input: options.input,
    env: options.env ?? process.env,
    encoding: 'utf8',
    stdio: ['pipe', 'pipe', 'pipe'],
    timeout: options.timeout ?? 120_000,
    maxBuffer: 64 * 1024 * 1024,
  });
}

/** Runs a tool and returns its exit status, stdout and stderr without throwing. */
export function runStatus(cmd: string, args: string[], options: { input?: string | Uint8Array; timeout?: number } = {}) {
  const path = whichTool(cmd) ?? cmd;
  const r = spawnSync(path, args, { input: options.input, encoding: 'utf8', timeout: options.timeout ?? 120_000, maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Runs qemu-img to make a LUKS-encrypted image. QEMU offers only `iter-time` (no fixed
 * iteration count) and its PBKDF benchmark fails now and then ("Unable to get accurate CPU
 * usage"): it times its first 32768 iterations (a few ms here) with the thread's CPU time, which
 * a tick-based clock can report as 0 ms. Each try fails in about 30 ms, so it is tried often.
 */
export function runQemuImgLuks(args: string[], attempts = 12): string {
  let last = '';
  for (let i = 0; i < attempts; i++) {
    const r = runStatus('qemu-img', args);
    if (r.status === 0) return r.stdout;
    last = r.stderr;
    if (!/accurate CPU usage/.test(r.stderr)) break;
  }
  throw new Error(`qemu-img ${args.join(' ')} failed: ${last}`);
}

/** A fresh temporary directory, removed by the returned `cleanup`. */
export function tempDir(prefix = 'brickcrypt-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Repository root (works from dist/test/helpers/ and test/helpers/). */
export const repoRoot = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
})();

/** Path of the CLI entry point. */
export const cliPath = join(repoRoot, 'bin', 'brickcrypt');

/** Runs the CLI; never throws on a non-zero exit. */
export function runCli(args: string[], options: { input?: string | Uint8Array; env?: NodeJS.ProcessEnv; timeout?: number } = {}) {
  const r = spawnSync(process.execPath, [cliPath, ...args], {
    input: options.input,
    env: { ...process.env, ...options.env },
    encoding: 'utf8',
    timeout: options.timeout ?? 300_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * cryptsetup's own test images live in ../shared/fixtures/cryptsetup-tests next to the
 * checkout. They are not part of the project: tests using them skip when absent.
 */
export const cryptsetupFixturesDir = [resolve(repoRoot, '..', 'shared', 'fixtures', 'cryptsetup-tests'), resolve(repoRoot, '..', '..', 'shared', 'fixtures', 'cryptsetup-tests')].find((d) => existsSync(d)) ?? resolve(repoRoot, '..', 'shared', 'fixtures', 'cryptsetup-tests');

export function needFixtures(): false | string {
  if (existsSync(cryptsetupFixturesDir)) return false;
  const message = `cryptsetup test images not found at ${cryptsetupFixturesDir}`;
  process.stderr.write(`\n*** SKIPPING fixture test: ${message} ***\n`);
  return message;
}

/** Decompresses `name.xz` (or extracts `name.tar.xz`) from the fixtures into `dir`; returns the output path. */
export function extractFixture(name: string, dir: string): string {
  const src = join(cryptsetupFixturesDir, name);
  if (name.endsWith('.tar.xz')) {
    execFileSync('tar', ['-xJf', src, '-C', dir]);
    return dir;
  }
  const out = join(dir, name.replace(/\.xz$/, ''));
  execFileSync('bash', ['-c', `xz -dc "$1" > "$2"`, 'xz', src, out]);
  return out;
}

/**
 * The volume key `cryptsetup luksDump --dump-volume-key` prints for `img` unlocked with
 * `keyFile`, as lowercase hex (the reference against which brickcrypt's key is compared).
 */
export function cryptsetupVolumeKeyHex(img: string, keyFile: string, extra: string[] = []): string {
  const out = run('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--disable-locks', '--key-file', keyFile, ...extra, img]);
  const m = /MK dump:\s*((?:[0-9a-f]{2}\s+)+)/.exec(out);
  if (!m) throw new Error(`cryptsetup printed no volume key:\n${out}`);
  return m[1]!.replace(/\s+/g, '');
}
