/**
 * Locks between backups and prune, as objects `locks/shared-*` and `locks/exclusive-*` (the
 * scheme restic uses, on any object store): `create` holds a shared lock, `prune` an exclusive
 * one. A process writes its lock first and then lists the others, so of two that start together
 * at least one sees the other and backs off (LockedError); no prune can delete chunks a running
 * backup is about to reference.
 *
 * A lock is stale - and ignored, then removed by the next exclusive locker - when its process is
 * gone (same host, pid not alive: kill -9) or when it was not refreshed for `STALE_AFTER_MS`
 * (another host); a holder rewrites its lock every `REFRESH_MS`.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { LockedError } from '../errors.js';
import { processAlive } from '../devices/volume-lock.js';
import type { ObjectStore } from './object-store.js';

export type LockKind = 'shared' | 'exclusive';

export interface LockRecord {
  kind: LockKind;
  operation: string;
  host: string;
  pid: number;
  created: string;
  refreshed: string;
}

export const REFRESH_MS = 5 * 60_000;
export const STALE_AFTER_MS = 30 * 60_000;

function isStale(r: LockRecord | undefined, now: number): boolean {
  if (!r) return false; // unreadable: treat as held, never delete it blindly
  if (r.host === hostname() && !processAlive(r.pid)) return true;
  return now - Date.parse(r.refreshed) > STALE_AFTER_MS;
}

async function readLock(store: ObjectStore, name: string): Promise<LockRecord | undefined | 'gone'> {
  try {
    return JSON.parse(Buffer.from(await store.get(name)).toString('utf8')) as LockRecord;
  } catch (err) {
    if ((err as { code?: string })?.code === 'NOT_FOUND') return 'gone';
    return undefined;
  }
}

export class RepositoryLock {
  #timer: NodeJS.Timeout | undefined;
  #released = false;

  private constructor(
    private readonly store: ObjectStore,
    readonly name: string,
    private readonly record: LockRecord,
  ) {}

  /** Takes a lock; LockedError when a conflicting live lock exists. */
  static async acquire(store: ObjectStore, kind: LockKind, operation: string): Promise<RepositoryLock> {
    const now = new Date().toISOString();
    const record: LockRecord = { kind, operation, host: hostname(), pid: process.pid, created: now, refreshed: now };
    const name = `locks/${kind}-${randomBytes(8).toString('hex')}`;
    await store.put(name, Buffer.from(JSON.stringify(record)));
    const lock = new RepositoryLock(store, name, record);
    try {
      for (const other of await store.list('locks/')) {
        if (other === name) continue;
        const r = await readLock(store, other);
        if (r === 'gone') continue;
        if (isStale(r, Date.now())) {
          if (kind === 'exclusive') await store.delete(other);
          continue;
        }
        const otherKind: LockKind | 'unknown' = r?.kind ?? 'unknown';
        if (kind === 'exclusive' || otherKind !== 'shared') {
          const who = r ? `${r.operation} by process ${r.pid} on ${r.host} since ${r.created}` : `an unreadable lock ${other}`;
          throw new LockedError(`The backup repository ${store.uri} is locked (${who}); try again later, or remove ${other} if that process is gone.`);
        }
      }
    } catch (err) {
      await lock.release();
      throw err;
    }
    lock.#timer = setInterval(() => void lock.#refresh(), REFRESH_MS);
    lock.#timer.unref();
    return lock;
  }

  async #refresh(): Promise<void> {
    if (this.#released) return;
    this.record.refreshed = new Date().toISOString();
    await this.store.put(this.name, Buffer.from(JSON.stringify(this.record))).catch(() => undefined);
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.store.delete(this.name);
  }
}
