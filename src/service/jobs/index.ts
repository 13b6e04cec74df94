/**
 * The job modules of the service beyond create/change_key/migrate/attach/detach: one file
 * per job. Actions are keyed by their name in `POST /v1/volumes/{id}/actions`, sources by
 * their field in `source` of `POST /v1/volumes`.
 */
import type { ActionJob, ServiceJobDeps, VolumeSource } from './service-job.js';
import { uploadToImageJob } from './upload-to-image.js';
import { backupJob } from './backup.js';
import { resizeJob } from './resize.js';
import { reencryptJob } from './reencrypt.js';
import { volumeFromImageSource } from './volume-from-image.js';
import { volumeFromBackupSource } from './volume-from-backup.js';

export type { ActionJob, ServiceJobDeps, VolumeSource } from './service-job.js';

export function serviceJobs(deps: ServiceJobDeps): { actions: Record<string, ActionJob>; sources: Record<string, VolumeSource> } {
  return {
    actions: { upload_to_image: uploadToImageJob(deps), backup: backupJob(deps), resize: resizeJob(deps), reencrypt: reencryptJob(deps) },
    sources: { image_id: volumeFromImageSource(deps), backup_id: volumeFromBackupSource(deps) },
  };
}
