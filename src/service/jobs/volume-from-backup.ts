/**
 * `POST /v1/volumes` with `source.backup_id`: a new volume restored from a backup the service
 * made (`backup` action; src/service/jobs/backup.ts) through `restoreBackup`
 * (src/backup/restore-backup.ts). The restored file holds the backed-up bytes exactly (LUKS
 * header and ciphertext of an encrypted volume), so the volume keeps its format and size and
 * gets a fresh clone of the backup's key (made inside the key manager: no key bytes read).
 *
 * A backup id is known to the project whose backup job made it; another project's is a 404.
 *
 * Resumption: `restoreBackup` writes a temporary file and renames it into place at the end, so
 * a resumed job restarts the restore from scratch: the half-written temporary file of the
 * earlier run and any target are removed first. The key clone made before is kept (checkpoint).
 */
import { promises as fsp } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { FileDevice } from '../../devices/file-device.js';
import { LuksVolume } from '../../luks/index.js';
import { restoreBackup } from '../../backup/restore-backup.js';
import type { CallerIdentity } from '../../keys/key-manager.js';
import type { JobContext, JobHandler } from '../job-runner.js';
import type { JobRow } from '../state-db.js';
import { withBackupRepository, type BackupJobResult } from './backup.js';
import { requireBackupRepo, volumeConsumer, type ServiceJobDeps, type SourceRequest, type VolumeSource } from './service-job.js';

/** The caller's project's finished backup job that made backup `id`. */
export async function findBackup(deps: ServiceJobDeps, caller: CallerIdentity, id: string): Promise<BackupJobResult> {
  const jobs = await deps.db.jobs({ project: caller.project, states: ['succeeded'] });
  const job = jobs.find((j) => j.type === 'backup' && (j.result as BackupJobResult | null)?.backup_id === id);
  if (!job) throw new NotFoundError(`Backup ${id} not found.`);
  return job.result as unknown as BackupJobResult;
}

interface RestoreParams {
  backup_id: string;
  format: string;
  size: number;
  backup_key_id: string | null;
}

export function volumeFromBackupSource(deps: ServiceJobDeps): VolumeSource {
  return {
    async prepare(d, caller, id, req: SourceRequest) {
      requireBackupRepo(d);
      const b = await findBackup(d, caller, id);
      if (req.format !== b.format) throw new InvalidArgumentError(`Backup ${id} is of a ${b.format} volume; restore it as format ${b.format} (migrate it afterwards for another format).`);
      if (req.size !== undefined && req.size !== b.size) throw new InvalidArgumentError(`Backup ${id} restores a volume of ${b.size} bytes; omit size (resize it afterwards).`);
      if (req.keyId !== undefined || req.luks !== undefined) throw new InvalidArgumentError('A volume restored from a backup keeps its LUKS header: it takes no key and no luks options (its key is a clone of the backup\'s).');
      const params: RestoreParams = { backup_id: id, format: b.format, size: b.size, backup_key_id: b.key_id };
      return { size: b.size, params: { ...params } };
    },
    handler: {
      run: (ctx) => runRestore(deps, ctx),
      cleanup: async (job: JobRow) => {
        const v = job.volume_id ? (await deps.db.volume(job.volume_id)) : undefined;
        if (!v) return;
        await removeLeftovers(v.path);
        await deps.db.updateVolume(v.id, { status: 'error' });
      },
    } satisfies JobHandler,
  };
}

/** The target and the temporary files of restores into it (`.NAME.restore-XXXXXXXX`). */
async function removeLeftovers(path: string): Promise<void> {
  await fsp.rm(path, { force: true });
  const prefix = `.${basename(path)}.restore-`;
  for (const f of await fsp.readdir(dirname(path)).catch(() => [] as string[])) {
    if (f.startsWith(prefix)) await fsp.rm(join(dirname(path), f), { force: true });
  }
}

async function runRestore(deps: ServiceJobDeps, ctx: JobContext): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const p = job.params as unknown as RestoreParams;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const km = deps.keys;
  const lock = await VolumeLock.acquire(vol.path);
  try {
    // The repository opens (its backup key is read as the caller) before anything is made.
    return await withBackupRepository(deps, job.caller, async (repo) => {
      let cp = job.checkpoint as { phase: string; key_id: string | null; runs: number } | null;
      if (!cp) {
        let key_id: string | null = null;
        if (p.backup_key_id) {
          key_id = await km.clone(job.caller, p.backup_key_id, { name: `volume-${vol.id}` });
          await deps.db.updateVolume(vol.id, { encryption_key_id: key_id, key_owned: true });
          await km.addConsumer(job.caller, key_id, volumeConsumer(vol.id)).catch(() => undefined);
        }
        cp = { phase: 'restore', key_id, runs: 0 };
      }
      cp = { ...cp, runs: cp.runs + 1 };
      await ctx.checkpoint({ ...cp });
      await removeLeftovers(vol.path);
      const report = await restoreBackup(repo, p.backup_id, vol.path, { signal: ctx.signal, onProgress: ({ bytes, total }) => ctx.progress(bytes, total) });
      let cipher: string | null = null;
      if (p.format !== 'raw') {
        const file = await FileDevice.open(vol.path, { readOnly: true });
        try {
          cipher = (await LuksVolume.open(file, { readOnly: true })).encryption;
        } finally {
          await file.close();
        }
      }
      await deps.db.updateVolume(vol.id, { cipher, status: 'available' });
      return { volume_id: vol.id, backup_id: p.backup_id, restored_bytes: report.size, written_bytes: report.writtenBytes, runs: cp.runs, attempts: job.attempts };
    });
  } finally {
    await lock.release();
  }
}
