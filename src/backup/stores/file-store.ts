/**
 * `file:DIR`: objects as files under DIR (the name's `/` are directories). A put writes a
 * temporary file in DIR/tmp, fdatasyncs it and renames it into place, so an object is whole
 * or absent even after kill -9 or a power loss; the directory is synced after the rename.
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { NotFoundError, ObjectStoreError } from '../../errors.js';
import { checkObjectName, type ObjectStore } from '../object-store.js';

function storeError(what: string, err: unknown): Error {
  if ((err as NodeJS.ErrnoException)?.code === 'ENOENT') return new NotFoundError(`${what}: no such object.`);
  return new ObjectStoreError(`${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

export class FileObjectStore implements ObjectStore {
  readonly parallelism = 4;
  readonly #dirs = new Set<string>();

  private constructor(
    readonly root: string,
    readonly uri: string,
  ) {}

  static async open(path: string, uri = `file:${path}`): Promise<FileObjectStore> {
    const root = resolve(path);
    return new FileObjectStore(root, uri);
  }

  #path(name: string): string {
    checkObjectName(name);
    return join(this.root, ...name.split('/'));
  }

  async #mkdir(dir: string): Promise<void> {
    if (this.#dirs.has(dir)) return;
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
    this.#dirs.add(dir);
  }

  async put(name: string, data: Uint8Array): Promise<void> {
    const target = this.#path(name);
    const tmpDir = join(this.root, 'tmp');
    const tmp = join(tmpDir, `${randomBytes(8).toString('hex')}.tmp`);
    try {
      await this.#mkdir(tmpDir);
      await this.#mkdir(dirname(target));
      const fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writeFile(data);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, target);
      await syncDir(dirname(target));
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw storeError(`${this.uri} put ${name}`, err);
    }
  }

  async get(name: string): Promise<Uint8Array> {
    try {
      return new Uint8Array(await fsp.readFile(this.#path(name)));
    } catch (err) {
      throw storeError(`${this.uri} get ${name}`, err);
    }
  }

  async exists(name: string): Promise<boolean> {
    try {
      await fsp.access(this.#path(name));
      return true;
    } catch {
      return false;
    }
  }

  async delete(name: string): Promise<void> {
    try {
      await fsp.rm(this.#path(name), { force: true });
    } catch (err) {
      throw storeError(`${this.uri} delete ${name}`, err);
    }
  }

  async list(prefix: string): Promise<string[]> {
    // Walk from the deepest directory the prefix names completely.
    const cut = prefix.lastIndexOf('/');
    const base = cut < 0 ? '' : prefix.slice(0, cut);
    const out: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await fsp.readdir(rel === '' ? this.root : join(this.root, ...rel.split('/')), { withFileTypes: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException)?.code === 'ENOENT' || (err as NodeJS.ErrnoException)?.code === 'ENOTDIR') return;
        throw storeError(`${this.uri} list ${prefix}`, err);
      }
      for (const e of entries) {
        const name = rel === '' ? e.name : `${rel}/${e.name}`;
        if (rel === '' && e.name === 'tmp') continue;
        if (e.isDirectory()) {
          if (name.startsWith(prefix) || prefix.startsWith(`${name}/`)) await walk(name);
        } else if (e.isFile() && name.startsWith(prefix)) {
          out.push(name);
        }
      }
    };
    await walk(base);
    return out;
  }

  async close(): Promise<void> {
    // Temporary files of a killed writer are garbage: nothing refers to them.
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, fsc.O_RDONLY);
  try {
    await fh.sync();
  } catch (err) {
    if ((err as NodeJS.ErrnoException)?.code !== 'EINVAL') throw err;
  } finally {
    await fh.close();
  }
}
