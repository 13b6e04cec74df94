/**
 * `file:DIR`: objects as files under DIR (the name's `/` are directories). A put writes a
 * temporary file in DIR/tmp and renames it into place only once its data is durable, so an object
 * is whole or absent even after kill -9 or a power loss.
 *
 * Chunks (`chunks/...`) are committed in batches: up to `CHUNK_BATCH` temporary files are made
 * durable with one syncfs(2) (native module; else one fdatasync each), then renamed, because one
 * fsync per 1 MiB object costs a journal commit each (~30 ms measured here, 30x the write). Every
 * other object (config, manifests, locks) first commits the pending chunks and their directories,
 * then is written, fdatasynced, renamed and its directory synced: a manifest is never durable
 * before the chunks it names. A pending chunk is already readable through get/exists/list.
 *
 * A chunk handed over in 4096-aligned memory with room up to the next 4096 bytes (what the
 * backup's sealing workers produce, src/backup/seal-pool.ts) is written with O_DIRECT instead: the
 * padded length straight from that memory to the disk, past the page cache, then truncated to the
 * object's length and fdatasynced, and renamed into place at once — the data is durable before the
 * rename, and the directories are synced by `sync`. Measured here (shared 2-core VM, load ~9):
 * 1024 x 1 MiB objects in 0.98 s this way, 2.68 s through the page cache and syncfs. Restore reads
 * objects the same way (`getInto`, O_DIRECT, into aligned memory).
 */
import { promises as fsp, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { NotFoundError, ObjectStoreError } from '../../errors.js';
import { nativeAddon, syncFileSystem } from '../../native-addon.js';

const DIRECT_ALIGNMENT = 4096;

/** `data` can be written with O_DIRECT as it is: aligned start, and its memory reaches the next aligned length. */
function directWritable(data: Uint8Array): boolean {
  const addon = nativeAddon();
  if (!addon || fsc.O_DIRECT === undefined || data.length === 0) return false;
  const padded = Math.ceil(data.length / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
  return data.byteOffset + padded <= data.buffer.byteLength && addon.alignGap(data, DIRECT_ALIGNMENT) === 0;
}
import { checkObjectName, type ObjectStore } from '../object-store.js';

function storeError(what: string, err: unknown): Error {
  if ((err as NodeJS.ErrnoException)?.code === 'ENOENT') return new NotFoundError(`${what}: no such object.`);
  return new ObjectStoreError(`${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/** Chunk files per durable batch. */
export const CHUNK_BATCH = 64;

export class FileObjectStore implements ObjectStore {
  readonly parallelism = 8;
  readonly #dirs = new Set<string>();
  /** Chunks written but not yet renamed into place: name -> temporary path. */
  readonly #pending = new Map<string, string>();
  /** Directories that received renames since their last sync. */
  readonly #dirtyDirs = new Set<string>();
  #commits: Promise<void> = Promise.resolve();
  /** False once the file system refused O_DIRECT (tmpfs): every chunk goes through the page cache. */
  #directWorks = true;

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

  async #writeTemp(data: Uint8Array, durable: boolean): Promise<string> {
    const tmpDir = join(this.root, 'tmp');
    const tmp = join(tmpDir, `${randomBytes(8).toString('hex')}.tmp`);
    await this.#mkdir(tmpDir);
    try {
      const fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        await fh.writeFile(data);
        if (durable) await fh.datasync();
      } finally {
        await fh.close();
      }
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
    return tmp;
  }

  /** O_DIRECT write of the padded length, truncate, fdatasync; false when the file system refuses O_DIRECT. */
  async #writeDirect(tmp: string, data: Uint8Array): Promise<boolean> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_DIRECT, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException)?.code === 'EINVAL') return false;
      throw err;
    }
    try {
      const padded = Math.ceil(data.length / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
      const whole = new Uint8Array(data.buffer, data.byteOffset, padded);
      let done = 0;
      while (done < padded) {
        const { bytesWritten } = await fh.write(whole, done, padded - done, done);
        done += bytesWritten;
      }
      await fh.truncate(data.length);
      await fh.datasync();
      return true;
    } catch (err) {
      await fsp.rm(tmp, { force: true }).catch(() => undefined);
      if ((err as NodeJS.ErrnoException)?.code === 'EINVAL') return false;
      throw err;
    } finally {
      await fh.close();
    }
  }

  async put(name: string, data: Uint8Array): Promise<void> {
    const target = this.#path(name);
    try {
      if (name.startsWith('chunks/') && this.#directWorks && directWritable(data)) {
        const tmpDir = join(this.root, 'tmp');
        await this.#mkdir(tmpDir);
        const tmp = join(tmpDir, `${randomBytes(8).toString('hex')}.tmp`);
        if (await this.#writeDirect(tmp, data)) {
          await this.#mkdir(dirname(target));
          const old = this.#pending.get(name);
          if (old) {
            this.#pending.delete(name);
            await fsp.rm(old, { force: true });
          }
          await fsp.rename(tmp, target);
          this.#dirtyDirs.add(dirname(target));
          return;
        }
        this.#directWorks = false;
      }
      if (name.startsWith('chunks/')) {
        const tmp = await this.#writeTemp(data, false);
        const old = this.#pending.get(name);
        this.#pending.set(name, tmp);
        if (old) await fsp.rm(old, { force: true });
        if (this.#pending.size >= CHUNK_BATCH) await this.#commit();
        return;
      }
      await this.sync();
      await this.#mkdir(dirname(target));
      const tmp = await this.#writeTemp(data, true);
      await fsp.rename(tmp, target);
      await syncDir(dirname(target));
    } catch (err) {
      throw storeError(`${this.uri} put ${name}`, err);
    }
  }

  /** Makes the pending chunk files durable, then renames them into place (one batch at a time). */
  #commit(): Promise<void> {
    const run = this.#commits.then(async () => {
      if (this.#pending.size === 0) return;
      const batch = [...this.#pending];
      const root = await fsp.open(this.root, fsc.O_RDONLY);
      try {
        if (!syncFileSystem(root.fd)) {
          for (const [, tmp] of batch) {
            const fh = await fsp.open(tmp, fsc.O_RDONLY);
            try {
              await fh.datasync();
            } finally {
              await fh.close();
            }
          }
        }
      } finally {
        await root.close();
      }
      for (const [name, tmp] of batch) {
        if (this.#pending.get(name) !== tmp) continue; // replaced or deleted meanwhile
        const target = this.#path(name);
        await this.#mkdir(dirname(target));
        await fsp.rename(tmp, target);
        this.#pending.delete(name);
        this.#dirtyDirs.add(dirname(target));
      }
    });
    this.#commits = run.catch(() => undefined);
    return run;
  }

  async sync(): Promise<void> {
    await this.#commit();
    const dirs = [...this.#dirtyDirs];
    this.#dirtyDirs.clear();
    for (const d of dirs) await syncDir(d);
  }

  async get(name: string): Promise<Uint8Array> {
    try {
      return new Uint8Array(await fsp.readFile(this.#pending.get(name) ?? this.#path(name)));
    } catch (err) {
      throw storeError(`${this.uri} get ${name}`, err);
    }
  }

  async getInto(name: string, into: Uint8Array): Promise<number> {
    const path = this.#pending.get(name) ?? this.#path(name);
    try {
      const direct = this.#directWorks && !this.#pending.has(name) && fsc.O_DIRECT !== undefined && nativeAddon()?.alignGap(into, DIRECT_ALIGNMENT) === 0 && into.length % DIRECT_ALIGNMENT === 0;
      let fh: fsp.FileHandle;
      try {
        fh = await fsp.open(path, direct ? fsc.O_RDONLY | fsc.O_DIRECT : fsc.O_RDONLY);
      } catch (err) {
        if (!direct || (err as NodeJS.ErrnoException)?.code !== 'EINVAL') throw err;
        fh = await fsp.open(path, fsc.O_RDONLY);
      }
      try {
        const size = (await fh.stat()).size;
        // O_DIRECT reads whole aligned blocks; the last one comes back short, at the end of the file.
        const want = direct ? Math.ceil(size / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT : size;
        if (want > into.length) throw new RangeError(`${name} (${size} bytes) does not fit ${into.length} bytes`);
        let done = 0;
        while (done < size) {
          const { bytesRead } = await fh.read(into, done, want - done, done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return Math.min(done, size);
      } finally {
        await fh.close();
      }
    } catch (err) {
      if (err instanceof RangeError) throw err;
      throw storeError(`${this.uri} get ${name}`, err);
    }
  }

  async exists(name: string): Promise<boolean> {
    try {
      await fsp.access(this.#pending.get(name) ?? this.#path(name));
      return true;
    } catch {
      return false;
    }
  }

  async delete(name: string): Promise<void> {
    try {
      const pending = this.#pending.get(name);
      if (pending) {
        this.#pending.delete(name);
        await fsp.rm(pending, { force: true });
      }
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
    for (const name of this.#pending.keys()) if (name.startsWith(prefix) && !out.includes(name)) out.push(name);
    return out;
  }

  async close(): Promise<void> {
    // Pending chunks are complete files: put them in place. (A killed writer's temporary files are
    // garbage nothing refers to.)
    await this.sync();
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
