/**
 * `backup`: a volume into the service's backup repository (`serve --backup-repo URI`) through
 * `createBackup` (src/backup/create-backup.ts): the volume file's container bytes, chunked,
 * deduplicated and sealed under the repository's backup key. An encrypted volume is never
 * decrypted; its key is cloned inside the key manager for the backup (as Cinder clones a
 * volume's key for a backup), so the backup restores after the volume and its key are gone.
 *
 * The repository's backup key is read as the API caller: the operator creates the repository
 * with `BRICKCRYPT_HOME=STATE brickcrypt backup init --repo URI [--grant-read USERS]`.
 *
 * Resumption: `createBackup` writes chunks first and the manifest last, so a run killed
 * part-way leaves only chunks. A resumed job runs the backup again from the start; the chunks
 * an earlier run stored are found in the repository and not uploaded again (the same rule
 * that makes backups incremental), so the work redone is reading the volume. If the earlier
 * run got as far as its manifest, that backup is adopted instead of making a second one.
 */
import { WrongBackupKeyError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { FileDevice } from '../../devices/file-device.js';
import { openObjectStore } from '../../backup/object-store.js';
import { Repository, readRepositoryConfig } from '../../backup/repository.js';
import { createBackup } from '../../backup/create-backup.js';
import type { BackupManifest } from '../../backup/manifest.js';
import type { CallerIdentity } from '../../keys/key-manager.js';
import type { JobContext, JobHandler } from '../job-runner.js';
import type { JobRow } from '../state-db.js';
import { needStatus, onlyKeys, requireBackupRepo, type ActionJob, type ServiceJobDeps } from './service-job.js';

/** The repository as the caller: its config, then its backup key from the key manager (wiped after opening). */
export async function withBackupRepository<T>(deps: ServiceJobDeps, caller: CallerIdentity, fn: (repo: Repository) => Promise<T>): Promise<T> {
  const store = await openObjectStore(requireBackupRepo(deps), deps.env ?? process.env);
  try {
    const config = await readRepositoryConfig(store);
    const object = await deps.keys.get(caller, config.keyId);
    if (object.type !== 'symmetric' || object.secret.length !== 32) {
      object.secret.wipe();
      throw new WrongBackupKeyError(`Key ${config.keyId} is not a 256-bit symmetric key, so it is not the repository's backup key.`);
    }
    let repo: Repository;
    try {
      repo = Repository.open(store, config, object.secret);
    } finally {
      object.secret.wipe();
    }
    try {
      return await fn(repo);
    } finally {
      repo.close();
    }
  } finally {
    await store.close();
  }
}

/** The source path a volume's backups are recorded under (it links incremental backups of one volume). */
export const backupSourcePath = (volumeId: string) => `brickcrypt-volume:${volumeId}`;

/** What a finished backup job records; `source.backup_id` finds it again (src/service/jobs/volume-from-backup.ts). */
export interface BackupJobResult {
  backup_id: string;
  repository: string;
  volume_id: string;
  format: string;
  /** The volume's usable bytes. */
  size: number;
  /** LUKS volumes: the key clone the backup owns. */
  key_id: string | null;
  cipher: string | null;
  name: string | null;
  stats: BackupManifest['stats'];
  runs: number;
  adopted?: boolean;
}

interface Checkpoint {
  phase: 'copy';
  key_id: string | null;
  started: string;
  runs: number;
}

export function backupJob(deps: ServiceJobDeps): ActionJob {
  return {
    busyStatus: 'maintenance',
    validate(d, _caller, volume, params) {
      onlyKeys(params, ['name'], 'backup');
      requireBackupRepo(d);
      needStatus(volume, 'backup', 'available');
    },
    handler: {
      run: (ctx) => runBackup(deps, ctx),
      cleanup: async (job: JobRow) => {
        const cp = job.checkpoint as Checkpoint | null;
        if (cp?.key_id) await deps.keys.delete(job.caller, cp.key_id, { force: true }).catch(() => undefined);
        if (job.volume_id && (await deps.db.volume(job.volume_id))) await deps.db.updateVolume(job.volume_id, { status: 'available' });
      },
    } satisfies JobHandler,
  };
}

async function runBackup(deps: ServiceJobDeps, ctx: JobContext): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const name = (job.params as { name?: string }).name;
  const lock = await VolumeLock.acquire(vol.path);
  try {
    return await withBackupRepository(deps, job.caller, async (repo) => {
      let cp = job.checkpoint as Checkpoint | null;
      if (!cp) {
        // The clone is the backup's own key: the volume (and its key) may go before the backup does.
        const key_id = vol.encryption_key_id ? await deps.keys.clone(job.caller, vol.encryption_key_id, { name: `backup of volume ${vol.id}` }) : null;
        cp = { phase: 'copy', key_id, started: new Date().toISOString(), runs: 0 };
      }
      cp = { ...cp, runs: cp.runs + 1 };
      await ctx.checkpoint({ ...cp });
      const sourcePath = backupSourcePath(vol.id);
      let manifest = cp.runs > 1 ? await manifestSince(repo, sourcePath, cp.started) : undefined;
      const adopted = manifest !== undefined;
      if (!manifest) {
        const device = await FileDevice.open(vol.path, { readOnly: true });
        try {
          manifest = await createBackup(repo, device, {
            sourcePath,
            ...(name !== undefined ? { name } : {}),
            signal: ctx.signal,
            onProgress: ({ bytes, total }) => ctx.progress(bytes, total),
          });
        } finally {
          await device.close();
        }
      } else ctx.progress(manifest.source.size, manifest.source.size);
      await deps.db.updateVolume(vol.id, { status: 'available' });
      const result: BackupJobResult = {
        backup_id: manifest.id,
        repository: repo.id,
        volume_id: vol.id,
        format: vol.format,
        size: vol.size,
        key_id: cp.key_id,
        cipher: vol.cipher,
        name: name ?? null,
        stats: manifest.stats,
        runs: cp.runs,
        ...(adopted ? { adopted: true } : {}),
      };
      return result as unknown as Record<string, unknown>;
    });
  } finally {
    await lock.release();
  }
}

/** A manifest of `sourcePath` written at or after `since` (an earlier run of this job that finished its manifest). */
async function manifestSince(repo: Repository, sourcePath: string, since: string): Promise<BackupManifest | undefined> {
  const ids = (await repo.listBackupIds()).sort().reverse().slice(0, 16);
  for (const id of ids) {
    const m = await repo.getManifest(id).catch(() => undefined);
    if (m && m.source.path === sourcePath && m.created >= since) return m;
  }
  return undefined;
}
