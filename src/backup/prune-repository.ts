/**
 * `backup delete` and `backup prune --keep-last N`. Deleting a backup removes its manifest only;
 * prune removes manifests beyond the newest N of each source, then every chunk no remaining
 * manifest references. Prune holds the exclusive repository lock (src/backup/repository-lock.ts)
 * for the whole mark-and-sweep, so no backup runs while chunks are judged unreferenced.
 */
import { InvalidArgumentError } from '../errors.js';
import type { Repository } from './repository.js';
import { RepositoryLock } from './repository-lock.js';

export interface PruneReport {
  deletedBackups: string[];
  keptBackups: number;
  deletedChunks: number;
  keptChunks: number;
}

export async function deleteBackup(repo: Repository, id: string): Promise<void> {
  await repo.getManifest(id); // NotFoundError for an unknown id; proves the key too
  await repo.deleteManifest(id);
}

export async function pruneRepository(repo: Repository, options: { keepLast: number; dryRun?: boolean }): Promise<PruneReport> {
  if (!Number.isSafeInteger(options.keepLast) || options.keepLast < 0) throw new InvalidArgumentError('--keep-last needs a count >= 0.');
  const lock = await RepositoryLock.acquire(repo.store, 'exclusive', 'backup prune');
  try {
    const ids = await repo.listBackupIds(); // oldest first
    // Oldest first by creation time (ms): ids carry whole seconds only, and backups can be quicker.
    const manifests = (await Promise.all(ids.map((id) => repo.getManifest(id)))).sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id));
    const bySource = new Map<string, string[]>();
    for (const m of manifests) bySource.set(m.source.path, [...(bySource.get(m.source.path) ?? []), m.id]);
    const doomed = new Set<string>();
    for (const list of bySource.values()) for (const id of list.slice(0, Math.max(0, list.length - options.keepLast))) doomed.add(id);
    // Mark: every chunk a surviving manifest names.
    const live = new Set<string>();
    for (const m of manifests) if (!doomed.has(m.id)) for (const c of m.chunks) if (c !== null) live.add(c);
    const stored = await repo.listChunks();
    const garbage = [...stored].filter((c) => !live.has(c));
    if (!options.dryRun) {
      // Manifests first: a crash in between leaves unreferenced chunks, never a manifest without its chunks.
      for (const id of doomed) await repo.deleteManifest(id);
      let next = 0;
      await Promise.all(
        Array.from({ length: repo.store.parallelism }, async () => {
          while (next < garbage.length) await repo.deleteChunk(garbage[next++]!);
        }),
      );
    }
    return { deletedBackups: [...doomed].sort(), keptBackups: ids.length - doomed.size, deletedChunks: garbage.length, keptChunks: stored.size - garbage.length };
  } finally {
    await lock.release();
  }
}
