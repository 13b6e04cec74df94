/**
 * One writer per volume: an exclusive lock file next to the volume (`<volume>.lock`),
 * created with O_EXCL and holding the owner's pid. A lock whose pid no longer runs is
 * stale and is taken over. Advisory: it guards brickcrypt processes from each other.
 *
 * Example:
 * ```ts
 * const lock = await VolumeLock.acquire('/srv/vol.img');   // LockedError if another writer holds it
 * try { ... } finally { await lock.release(); }
 * ```
 */
import { promises as fsp, constants as fsc, unlinkSync, readFileSync } from 'node:fs';
import { DeviceIoError, LockedError } from '../errors.js';

/** Path of the lock file guarding `volumePath`. */
export function lockPathFor(volumePath: string): string {
  return `${volumePath}.lock`;
}

/** True if a process with this pid exists (EPERM means it exists but belongs to someone else). */
export function processAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class VolumeLock {
  #released = false;
  private constructor(
    readonly path: string,
    readonly pid: number,
  ) {}

  /** Takes the lock for this process; throws `LockedError` naming the holder if it is taken. */
  static async acquire(volumePath: string, pid: number = process.pid): Promise<VolumeLock> {
    const path = lockPathFor(volumePath);
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const h = await fsp.open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
        try {
          await h.writeFile(`${pid}\n`);
        } finally {
          await h.close();
        }
        return new VolumeLock(path, pid);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new DeviceIoError(`Cannot create lock ${path}: ${(err as Error).message}`, { cause: err });
      }
      const holder = await readHolder(path);
      if (holder !== undefined && processAlive(holder) && holder !== pid) {
        throw new LockedError(`${volumePath} is in use by process ${holder} (lock ${path}).`);
      }
      if (holder === undefined) {
        // Empty or unreadable: maybe a writer between create and write. Give it a moment.
        await new Promise((r) => setTimeout(r, 50));
        const again = await readHolder(path);
        if (again !== undefined && processAlive(again) && again !== pid) throw new LockedError(`${volumePath} is in use by process ${again} (lock ${path}).`);
      }
      // Stale (holder gone): remove and retry the exclusive create.
      await fsp.rm(path, { force: true });
    }
    throw new LockedError(`Could not take the lock ${path}.`);
  }

  /** Removes the lock file if it is still ours. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    if ((await readHolder(this.path)) === this.pid) await fsp.rm(this.path, { force: true });
  }

  /** Synchronous release for process exit handlers. */
  releaseSync(): void {
    if (this.#released) return;
    this.#released = true;
    try {
      if (Number.parseInt(readFileSync(this.path, 'utf8').trim(), 10) === this.pid) unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

async function readHolder(path: string): Promise<number | undefined> {
  try {
    const text = (await fsp.readFile(path, 'utf8')).trim();
    const pid = Number.parseInt(text, 10);
    return /^\d+$/.test(text) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}
