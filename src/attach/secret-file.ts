/**
 * The passphrase file QEMU (`--object secret,file=PATH,format=raw`) and virsh
 * (`secret-set-value --file PATH --plain`) read, so the passphrase never appears on a
 * command line or in the process list. Created exclusively with mode 0600; the bytes are
 * the passphrase exactly (no newline added: QEMU and cryptsetup take every byte).
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { AlreadyExistsError, DeviceIoError, InvalidArgumentError, NotFoundError } from '../errors.js';
import type { Passphrase } from '../secret.js';

export interface SecretFileOptions {
  /** Where to write the file. Default: a new file under `$XDG_RUNTIME_DIR/brickcrypt/`, else a new private temp directory. */
  path?: string;
  /** Replace an existing file at `path` (it is unlinked first, never written through). */
  overwrite?: boolean;
  /** Names the default file after this volume (basename only). */
  volumePath?: string;
  /** Environment to read XDG_RUNTIME_DIR from. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

export interface SecretFile {
  /** Absolute path of the file written. */
  path: string;
  /** Where the path came from: the caller, the runtime dir or a fresh temp dir. */
  location: 'given' | 'runtime-dir' | 'temp-dir';
}

/**
 * Writes `passphrase` to a new 0600 file and returns its path. The caller keeps the passphrase.
 *
 * @example
 * const { path } = await writeSecretFile(pass, { volumePath: '/srv/vol.img' });
 * // path: /run/user/1000/brickcrypt/vol.img-3f9a0c1d.secret
 */
export async function writeSecretFile(passphrase: Passphrase, options: SecretFileOptions = {}): Promise<SecretFile> {
  let path: string;
  let location: SecretFile['location'];
  if (options.path !== undefined) {
    if (options.path === '') throw new InvalidArgumentError('--secret-file: the path is empty.');
    path = resolve(options.path);
    location = 'given';
    await checkParent(path);
    if (options.overwrite) await fsp.rm(path, { force: true }).catch((err) => ioError(path, err));
  } else {
    const name = `${safeName(options.volumePath ? basename(options.volumePath) : 'volume')}-${randomBytes(4).toString('hex')}.secret`;
    const runtime = await runtimeDir(options.env ?? process.env);
    if (runtime !== undefined) {
      path = join(runtime, name);
      location = 'runtime-dir';
    } else {
      const dir = await fsp.mkdtemp(join(tmpdir(), 'brickcrypt-secret-')).catch((err) => ioError(tmpdir(), err));
      path = join(dir, name);
      location = 'temp-dir';
    }
  }
  let handle: fsp.FileHandle;
  try {
    // O_EXCL|O_NOFOLLOW: never write through a file or symlink someone else placed there.
    handle = await fsp.open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new AlreadyExistsError(`Secret file ${path} already exists (choose another path or allow overwriting).`);
    }
    return ioError(path, err);
  }
  try {
    await handle.chmod(0o600); // the umask may have removed bits, never added: make it exact
    await handle.writeFile(passphrase.expose());
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await fsp.rm(path, { force: true }).catch(() => undefined);
    return ioError(path, err);
  }
  await handle.close();
  return { path, location };
}

/**
 * Removes a secret file written by `writeSecretFile` (overwriting its bytes with zeros
 * first), and its private temp directory when it has one. Missing files are fine.
 */
export async function removeSecretFile(file: SecretFile | string): Promise<void> {
  const f = typeof file === 'string' ? { path: file, location: 'given' as const } : file;
  try {
    const handle = await fsp.open(f.path, fsc.O_WRONLY | fsc.O_NOFOLLOW);
    try {
      const { size } = await handle.stat();
      await handle.write(new Uint8Array(size), 0, size, 0);
    } finally {
      await handle.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return ioError(f.path, err);
  }
  await fsp.rm(f.path, { force: true });
  if (f.location === 'temp-dir') await fsp.rmdir(dirname(f.path)).catch(() => undefined);
}

function safeName(name: string): string {
  const s = name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '');
  return s.slice(0, 64) || 'volume';
}

/** `$XDG_RUNTIME_DIR/brickcrypt`, created 0700, only when the runtime dir is a private directory of ours. */
async function runtimeDir(env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const base = env.XDG_RUNTIME_DIR;
  if (!base || !base.startsWith('/')) return undefined;
  const dir = join(base, 'brickcrypt');
  try {
    await fsp.mkdir(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return undefined;
  }
  try {
    const st = await fsp.lstat(dir);
    const uid = process.getuid?.();
    if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o077) !== 0) return undefined;
  } catch {
    return undefined;
  }
  return dir;
}

async function checkParent(path: string): Promise<void> {
  const parent = dirname(path);
  const st = await fsp.stat(parent).catch(() => undefined);
  if (!st?.isDirectory()) throw new NotFoundError(`Directory ${parent} for the secret file does not exist.`);
}

function ioError(path: string, err: unknown): never {
  throw new DeviceIoError(`${path}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}
