/**
 * `upload_to_image`: a volume into the image service (Cinder's os-volume_upload_image), through
 * `uploadVolume` (src/workflows/image-upload.ts) as the API caller.
 *
 * - `mode: "as-is"` (default): the volume file's bytes; a LUKS volume's key is cloned inside the
 *   key manager for the image (no key bytes are read, so a `creator` may do it).
 * - `mode: "decrypted"`: the plaintext as a raw or (`disk_format: "qcow2"`) qcow2 image; the
 *   volume's key is read as the caller (a `creator` gets FORBIDDEN).
 * - `sign: {private_key_id, ...}` signs the bytes as they stream (the private key is read as
 *   the caller); `import_method: "glance-direct"` stages and imports instead of `PUT .../file`.
 *
 * Resumption: an upload is one HTTP stream and cannot continue mid-way, so a resumed job
 * restarts from scratch, safely: every image it makes carries the property
 * `brickcrypt_job_id`, and a resumed run first deletes the images of earlier runs of the same
 * job (with the key clones they own) before it uploads again. A cancelled or failed upload
 * deletes its image and its key clone itself.
 */
import { InvalidArgumentError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { deleteImage, uploadVolume } from '../../workflows/image-upload.js';
import { serverWorkerCount } from '../../workflows/worker-pool.js';
import type { DiskFormat } from '../../image-service/glance-wire.js';
import { HASH_METHODS, KEY_TYPES } from '../../signatures/image-signature.js';
import type { JobContext, JobHandler } from '../job-runner.js';
import type { JobRow } from '../state-db.js';
import { passphraseOfKey } from '../volume-files.js';
import { imageServiceFor, needStatus, onlyKeys, type ActionJob, type ServiceJobDeps } from './service-job.js';

/** The image property that ties an image to the job that uploads it. */
export const JOB_ID_PROPERTY = 'brickcrypt_job_id';
export const VOLUME_ID_PROPERTY = 'brickcrypt_volume_id';

interface UploadParams {
  image_name?: string;
  mode?: 'as-is' | 'decrypted';
  disk_format?: DiskFormat;
  visibility?: 'private' | 'shared' | 'community' | 'public';
  properties?: Record<string, string>;
  import_method?: 'glance-direct';
  sign?: { private_key_id: string; certificate_id?: string; hash_method?: string; key_type?: string };
}

const FIELDS = ['image_name', 'mode', 'disk_format', 'visibility', 'properties', 'import_method', 'sign'] as const;
const SIGN_FIELDS = ['private_key_id', 'certificate_id', 'hash_method', 'key_type'] as const;

export function uploadToImageJob(deps: ServiceJobDeps): ActionJob {
  return {
    busyStatus: 'maintenance',
    validate(d, caller, volume, raw) {
      onlyKeys(raw, FIELDS, 'upload_to_image');
      const p = raw as UploadParams;
      imageServiceFor(d, caller); // 501 with the reason when the service has none
      needStatus(volume, 'upload_to_image', 'available');
      if ((p.mode ?? 'as-is') === 'as-is' && p.disk_format !== undefined) throw new InvalidArgumentError('disk_format applies to mode "decrypted" only (an as-is upload keeps the volume bytes).');
      if (p.import_method !== undefined && p.import_method !== 'glance-direct') throw new InvalidArgumentError(`upload_to_image: import_method ${String(p.import_method)}: only glance-direct is offered.`);
      if (p.sign !== undefined) {
        onlyKeys(p.sign, SIGN_FIELDS, 'upload_to_image.sign');
        if (typeof p.sign.private_key_id !== 'string' || p.sign.private_key_id === '') throw new InvalidArgumentError('upload_to_image.sign needs private_key_id (a private key in the key manager).');
        if (p.sign.hash_method !== undefined && !Object.hasOwn(HASH_METHODS, p.sign.hash_method)) throw new InvalidArgumentError(`upload_to_image.sign: unknown hash_method ${p.sign.hash_method}.`);
        if (p.sign.key_type !== undefined && !Object.hasOwn(KEY_TYPES, p.sign.key_type)) throw new InvalidArgumentError(`upload_to_image.sign: unknown key_type ${p.sign.key_type}.`);
      }
      for (const k of Object.keys(p.properties ?? {})) {
        if (k === JOB_ID_PROPERTY || k === VOLUME_ID_PROPERTY || k.startsWith('os_') || k.startsWith('cinder_') || k.startsWith('img_signature')) {
          throw new InvalidArgumentError(`upload_to_image: property ${k} is set by the service.`);
        }
      }
    },
    handler: {
      run: (ctx) => runUpload(deps, ctx),
      cleanup: async (job: JobRow) => {
        if (job.volume_id && (await deps.db.volume(job.volume_id))) await deps.db.updateVolume(job.volume_id, { status: 'available' });
      },
    } satisfies JobHandler,
  };
}

async function runUpload(deps: ServiceJobDeps, ctx: JobContext): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const p = job.params as UploadParams;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const client = imageServiceFor(deps, job.caller);
  const km = deps.keys;
  const lock = await VolumeLock.acquire(vol.path);
  try {
    const previous = (job.checkpoint as { phase?: string; runs?: number } | null) ?? null;
    let removed: string[] = [];
    if (previous?.phase === 'uploading') {
      // An earlier run of this job died mid-stream: its image (and key clone) go first.
      const leftovers = await client.list({ filters: { [JOB_ID_PROPERTY]: job.id }, signal: ctx.signal });
      for (const image of leftovers) {
        await deleteImage({ client, imageId: image.id, keyManager: async () => ({ keyManager: km, caller: job.caller }) }).catch((err: Error) =>
          deps.log(`job ${job.id}: could not delete image ${image.id} of an earlier run: ${err.message}`),
        );
      }
      removed = leftovers.map((i) => i.id);
    }
    await ctx.checkpoint({ phase: 'uploading', runs: (previous?.runs ?? 0) + 1 });
    const mode = p.mode === 'decrypted' ? 'decrypt' : 'as-is';
    const name = p.image_name ?? `volume-${vol.name}`;
    const report = await uploadVolume({
      volume: vol.path,
      client,
      name,
      mode,
      ...(p.disk_format ? { diskFormat: p.disk_format } : {}),
      ...(p.visibility ? { visibility: p.visibility } : {}),
      flow: p.import_method === 'glance-direct' ? 'glance-direct' : 'file',
      // The signing key (and certificate) are read as the caller before the image is created.
      ...(p.sign
        ? {
            sign: {
              hashMethod: p.sign.hash_method ?? 'SHA-256',
              keyType: p.sign.key_type ?? 'RSA-PSS',
              key: { privateKeyId: p.sign.private_key_id },
              ...(p.sign.certificate_id ? { certificateId: p.sign.certificate_id } : {}),
            },
          }
        : {}),
      properties: { ...(p.properties ?? {}), [JOB_ID_PROPERTY]: job.id, [VOLUME_ID_PROPERTY]: vol.id },
      keyManager: km,
      caller: job.caller,
      ...(mode === 'as-is' && vol.encryption_key_id ? { volumeKeyId: vol.encryption_key_id } : {}),
      ...(mode === 'decrypt' && vol.encryption_key_id ? { passphrase: () => passphraseOfKey(km, job.caller, vol.encryption_key_id!) } : {}),
      signal: ctx.signal,
      onProgress: ({ bytes, total }) => ctx.progress(bytes, total),
      // Decryption off the API's event loop (uploadVolume makes its own pool).
      workers: serverWorkerCount(),
    });
    await deps.db.updateVolume(vol.id, { status: 'available' });
    return {
      image_id: report.imageId,
      image_name: report.name,
      mode: p.mode ?? 'as-is',
      disk_format: report.diskFormat,
      container_format: report.containerFormat,
      bytes: report.bytes,
      sha512: report.sha512,
      ...(report.clonedKeyId ? { image_key_id: report.clonedKeyId } : {}),
      import_method: report.flow === 'glance-direct' ? 'glance-direct' : 'file',
      ...(report.properties.img_signature !== undefined
        ? {
            signature: {
              hash_method: report.properties.img_signature_hash_method,
              key_type: report.properties.img_signature_key_type,
              ...(report.properties.img_signature_certificate_uuid ? { certificate_id: report.properties.img_signature_certificate_uuid } : {}),
            },
          }
        : {}),
      runs: (previous?.runs ?? 0) + 1,
      ...(removed.length ? { removed_images: removed } : {}),
    };
  } finally {
    await lock.release();
  }
}
