/**
 * `POST /v1/volumes` with `source.image_id`: a new volume from an image in the image service
 * (`serve --image-service URL`) through `downloadImage` (src/workflows/image-download.ts), as
 * the API caller (its identity goes to Glance as the headers Keystone's middleware sets, and
 * to the key manager unchanged).
 *
 * - A plain image (raw or qcow2) becomes a volume of the requested format; a LUKS volume gets
 *   a new managed key (or `key`), as a blank volume does.
 * - An image uploaded as-is from an encrypted volume (`os_encrypt_key_id` /
 *   `cinder_encryption_key_id`) asked for in its own LUKS version keeps its ciphertext, and the
 *   volume's key is a clone of the image's key (no key bytes read: a `creator` may do it).
 *   Another format, `key` or `luks` options re-key it: the image's key is read as the caller.
 *
 * The sha512 Glance recorded (and a signature, when the image has one) is checked before the
 * volume file is committed; `source.require_signature` refuses an unsigned image at the request
 * (422 INTEGRITY, nothing made), and a signature that does not verify fails the job with its
 * typed error, no volume file and the volume in `error`, as every failed creation. Resumption: a download is one stream and cannot continue mid-way,
 * so a resumed job restarts it from scratch, safely: the partial file and any target of the
 * earlier run are removed first (the target appears only by a rename at the very end).
 */
import { promises as fsp } from 'node:fs';
import { ForbiddenError, IntegrityError, InvalidArgumentError } from '../../errors.js';
import { SIGNATURE_PROPERTY } from '../../signatures/image-signature.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { FileDevice } from '../../devices/file-device.js';
import { LuksVolume } from '../../luks/index.js';
import { downloadImage, encryptedImageKeyId } from '../../workflows/image-download.js';
import { partialPath, type LuksTargetOptions } from '../../workflows/convert.js';
import { ENCRYPTION_PROPERTY } from '../../workflows/image-upload.js';
import type { Passphrase } from '../../secret.js';
import type { JobContext, JobHandler } from '../job-runner.js';
import type { JobRow, VolumeFormat } from '../state-db.js';
import { formatOptionsOf, newKeyPassphrase, passphraseOfKey, type LuksRequestOptions } from '../volume-files.js';
import { imageServiceFor, volumeConsumer, type ServiceJobDeps, type SourceRequest, type VolumeSource } from './service-job.js';

interface ImageParams {
  image_id: string;
  format: VolumeFormat;
  /** Requested usable size (else the image's). */
  requested_size?: number;
  key_id?: string;
  luks?: LuksRequestOptions;
  /** The image is encrypted and is copied as-is (ciphertext unchanged, key cloned). */
  as_is: boolean;
  /** Refuse an unsigned image (checked at the request, and again by the download). */
  require_signature?: boolean;
}

const LUKS_OF: Record<string, VolumeFormat> = { LUKSv1: 'luks1', LUKSv2: 'luks2', LUKS: 'luks1' };

export function volumeFromImageSource(deps: ServiceJobDeps): VolumeSource {
  return {
    async prepare(d, caller, id, req: SourceRequest) {
      const client = imageServiceFor(d, caller);
      const image = await client.show(id);
      if (image.status !== 'active' || image.size === null) throw new InvalidArgumentError(`Image ${id} is ${image.status}: only an active image with data can become a volume.`);
      // Refused now, before any volume row exists; a bad signature fails the job (volume `error`).
      if (req.requireSignature && image.properties[SIGNATURE_PROPERTY.signature] === undefined) {
        throw new IntegrityError(`Image ${id} has no ${SIGNATURE_PROPERTY.signature} property, and source.require_signature is set.`);
      }
      const encrypted = encryptedImageKeyId(image) !== undefined;
      const imageFormat = LUKS_OF[image.properties[ENCRYPTION_PROPERTY.format] ?? ''];
      const asIs = encrypted && imageFormat === req.format && req.keyId === undefined && req.luks === undefined && req.size === undefined;
      const decryptSize = Number(image.properties[ENCRYPTION_PROPERTY.decryptSize]);
      // The exact usable size is known once the image is read; until then the best estimate.
      const size = req.size ?? (encrypted && Number.isSafeInteger(decryptSize) && decryptSize > 0 ? decryptSize : image.size);
      const params: ImageParams = { image_id: id, format: req.format, as_is: asIs, ...(req.size !== undefined ? { requested_size: req.size } : {}), ...(req.keyId ? { key_id: req.keyId } : {}), ...(req.luks ? { luks: req.luks } : {}), ...(req.requireSignature ? { require_signature: true } : {}) };
      return { size, params: { ...params } };
    },
    handler: {
      run: (ctx) => runDownload(deps, ctx),
      cleanup: async (job: JobRow) => {
        const v = job.volume_id ? (await deps.db.volume(job.volume_id)) : undefined;
        if (!v) return;
        await fsp.rm(v.path, { force: true });
        await fsp.rm(partialPath(v.path), { force: true });
        await deps.db.updateVolume(v.id, { status: 'error' });
      },
    } satisfies JobHandler,
  };
}

async function runDownload(deps: ServiceJobDeps, ctx: JobContext): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const p = job.params as unknown as ImageParams;
  const km = deps.keys;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const client = imageServiceFor(deps, job.caller);
  const needsKey = p.format !== 'raw' && !p.as_is;
  const lock = await VolumeLock.acquire(vol.path);
  let pass: Passphrase | undefined;
  try {
    let cp = job.checkpoint as { phase: string; key_id: string | null; runs: number } | null;
    if (needsKey) {
      if (cp?.key_id) {
        const current = (await deps.db.volume(vol.id))!;
        try {
          pass = await passphraseOfKey(km, job.caller, cp.key_id);
        } catch (err) {
          if (!(err instanceof ForbiddenError) || !current.key_owned) throw err;
          // The new key's bytes were handed out once, to the run that died: a fresh key.
          await km.delete(job.caller, cp.key_id, { force: true }).catch(() => undefined);
          cp = null;
        }
      }
      if (!cp?.key_id) {
        let key_id: string;
        if (p.key_id) {
          key_id = p.key_id;
          pass = await passphraseOfKey(km, job.caller, key_id);
        } else {
          const created = await newKeyPassphrase(km, job.caller, `volume-${vol.id}`);
          key_id = created.id;
          pass = created.passphrase;
          await deps.db.updateVolume(vol.id, { encryption_key_id: key_id, key_owned: true });
        }
        await km.addConsumer(job.caller, key_id, volumeConsumer(vol.id)).catch(() => undefined);
        cp = { phase: 'download', key_id, runs: cp?.runs ?? 0 };
      }
    }
    cp = { phase: 'download', key_id: cp?.key_id ?? null, runs: (cp?.runs ?? 0) + 1 };
    await ctx.checkpoint({ ...cp });
    // A resumed run starts over: nothing of the earlier one stays.
    await fsp.rm(vol.path, { force: true });
    await fsp.rm(partialPath(vol.path), { force: true });
    let luks: LuksTargetOptions | undefined;
    if (needsKey) {
      const { type: _type, ...rest } = formatOptionsOf(p.format as 'luks1' | 'luks2', p.luks);
      luks = rest;
    }
    const held = pass;
    const report = await downloadImage({
      client,
      imageId: p.image_id,
      target: vol.path,
      targetFormat: p.format,
      keyManager: km,
      caller: job.caller,
      requireSignature: p.require_signature === true,
      ...(held ? { targetPassphrase: async () => held.clone() as Passphrase } : {}),
      ...(luks ? { luks } : {}),
      ...(p.requested_size !== undefined ? { size: p.requested_size } : {}),
      signal: ctx.signal,
      onProgress: ({ bytes, total }) => ctx.progress(bytes, total),
    });
    if (report.clonedKeyId) {
      await deps.db.updateVolume(vol.id, { encryption_key_id: report.clonedKeyId, key_owned: true });
      await km.addConsumer(job.caller, report.clonedKeyId, volumeConsumer(vol.id)).catch(() => undefined);
    }
    // The volume's exact usable size and cipher, from the file now in place.
    const file = await FileDevice.open(vol.path, { readOnly: true });
    let size = file.size;
    let cipher: string | null = null;
    try {
      if (p.format !== 'raw') {
        const luksVolume = await LuksVolume.open(file, { readOnly: true });
        size = Math.floor(luksVolume.payloadSize / luksVolume.sectorSize) * luksVolume.sectorSize;
        cipher = luksVolume.encryption;
      }
    } finally {
      await file.close();
    }
    await deps.db.updateVolume(vol.id, { size, cipher, status: 'available' });
    return {
      volume_id: vol.id,
      image_id: p.image_id,
      mode: report.mode,
      image_bytes: report.imageBytes,
      sha512: report.sha512,
      ...(report.signature ? { signature_verified: true } : {}),
      runs: cp.runs,
      attempts: job.attempts,
    };
  } finally {
    pass?.wipe();
    await lock.release();
  }
}
