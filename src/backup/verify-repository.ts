/**
 * `backup verify [ID]`: every manifest decrypts, authenticates and is complete (all its chunks
 * exist), and every chunk object authenticates and has the id it is stored under. With an id,
 * that backup's manifest and chunks only. Problems are collected, then reported as one
 * IntegrityError (exit 7) naming each.
 */
import { BrickcryptError, IntegrityError } from '../errors.js';
import { chunkObjectName, type Repository } from './repository.js';

export interface VerifyProgress {
  objects: number;
  total: number;
}

export interface VerifyReport {
  backups: number;
  chunks: number;
  problems: string[];
}

async function parallelMap<T>(items: T[], parallel: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(parallel, items.length)) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

/** Verifies; throws IntegrityError when anything is wrong (the report is in `problems` either way). */
export async function verifyRepository(repo: Repository, options: { id?: string; onProgress?: (p: VerifyProgress) => void } = {}): Promise<VerifyReport> {
  const problems: string[] = [];
  const note = (err: unknown) => {
    if (err instanceof IntegrityError) problems.push(err.message);
    else throw err;
  };
  const ids = options.id !== undefined ? [options.id] : await repo.listBackupIds();
  const referenced = new Set<string>();
  for (const id of ids) {
    try {
      const m = await repo.getManifest(id);
      for (const c of m.chunks) if (c !== null) referenced.add(c);
    } catch (err) {
      if (options.id !== undefined && err instanceof BrickcryptError && err.code === 'NOT_FOUND') throw err;
      note(err);
    }
  }
  const stored = await repo.listChunks();
  for (const c of referenced) if (!stored.has(c)) problems.push(`chunk ${c} is referenced but missing.`);
  const toCheck = options.id !== undefined ? [...referenced].filter((c) => stored.has(c)) : [...stored];
  let checked = 0;
  await parallelMap(toCheck, repo.store.parallelism, async (c) => {
    try {
      await repo.openChunkAsync(c, await repo.store.get(chunkObjectName(c)));
    } catch (err) {
      note(err);
    }
    checked++;
    options.onProgress?.({ objects: checked, total: toCheck.length });
  });
  const report = { backups: ids.length, chunks: toCheck.length, problems };
  if (problems.length > 0) {
    const err = new IntegrityError(`Verification found ${problems.length} problem(s):\n  ${problems.slice(0, 20).join('\n  ')}${problems.length > 20 ? '\n  ...' : ''}`);
    (err as IntegrityError & { report?: VerifyReport }).report = report;
    throw err;
  }
  return report;
}
