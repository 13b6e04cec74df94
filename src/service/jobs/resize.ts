/**
 * `resize`: grows or shrinks a volume to `size` usable bytes (Cinder's extend; cryptsetup resize)
 * through `resizeLuks` (src/luks/resize.ts) for LUKS volumes, a file truncate for raw ones. The
 * size asked for is the plaintext size; a LUKS volume rounds it up to whole encryption sectors,
 * and the volume record's `size` becomes the size the volume then has.
 *
 * Growing a LUKS volume needs its key (the new space is written as encrypted zeros), read as the
 * caller; shrinking needs no key but `allow_truncate: true` (else SHRINK_REFUSED, 400, before
 * anything is queued or written).
 *
 * Resumption: `resizeLuks` leaves the old or the new size after a crash at any point (its header
 * writes are ordered for that, docs/luks.md "resize"), so a resumed job plans the resize again
 * from what is on disk and does what is left (nothing, when the killed run had finished).
 */
import { promises as fsp } from 'node:fs';
import { ShrinkRefusedError } from '../../errors.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import { FileDevice } from '../../devices/file-device.js';
import { LuksVolume } from '../../luks/index.js';
import { planResize, resizeLuks } from '../../luks/resize.js';
import type { VolumeKey } from '../../secret.js';
import type { JobContext, JobHandler } from '../job-runner.js';
import type { JobRow } from '../state-db.js';
import { parseVolumeSize } from '../volume-files.js';
import { passphraseOfKey } from '../volume-files.js';
import { needStatus, onlyKeys, type ActionJob, type ServiceJobDeps } from './service-job.js';

interface ResizeParams {
  size: number | string;
  allow_truncate?: boolean;
}

function shrinkRefused(from: number, to: number): ShrinkRefusedError {
  return new ShrinkRefusedError(`Refusing to shrink the volume from ${from} to ${to} bytes: the data past the new end would be lost. Send allow_truncate: true.`);
}

export function resizeJob(deps: ServiceJobDeps): ActionJob {
  return {
    busyStatus: 'maintenance',
    validate(_d, _caller, volume, params) {
      onlyKeys(params, ['size', 'allow_truncate'], 'resize');
      needStatus(volume, 'resize', 'available');
      const size = parseVolumeSize((params as unknown as ResizeParams).size);
      if (size < volume.size && params.allow_truncate !== true) throw shrinkRefused(volume.size, size);
    },
    handler: {
      run: (ctx) => runResize(deps, ctx),
      cleanup: async (job: JobRow) => {
        if (job.volume_id && (await deps.db.volume(job.volume_id))) await deps.db.updateVolume(job.volume_id, { status: 'available' });
      },
    } satisfies JobHandler,
  };
}

async function runResize(deps: ServiceJobDeps, ctx: JobContext): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const p = job.params as unknown as ResizeParams;
  const wanted = parseVolumeSize(p.size);
  const allowTruncate = p.allow_truncate === true;
  const lock = await VolumeLock.acquire(vol.path);
  try {
    let result: Record<string, unknown>;
    if (vol.format === 'raw') {
      const old = (await fsp.stat(vol.path)).size;
      if (wanted < old && !allowTruncate) throw shrinkRefused(old, wanted);
      ctx.progress(0, Math.abs(wanted - old));
      if (wanted !== old) {
        // A grown file reads as zeros (ftruncate); a raw volume has no header to keep in step.
        await fsp.truncate(vol.path, wanted);
        const f = await FileDevice.open(vol.path);
        await f.sync();
        await f.close();
      }
      result = { volume_id: vol.id, format: 'raw', old_size: old, new_size: wanted, zeroed_bytes: 0 };
    } else {
      const file = await FileDevice.open(vol.path);
      let key: VolumeKey | undefined;
      try {
        const luks = await LuksVolume.open(file, { readOnly: true });
        // A LUKS payload is whole encryption sectors (as at create, the size is rounded up).
        const payloadSize = Math.ceil(wanted / luks.sectorSize) * luks.sectorSize;
        const plan = planResize(luks, payloadSize, { allowTruncate });
        ctx.progress(0, plan.zeroBytes);
        if (plan.newPayloadSize > plan.oldPayloadSize) {
          luks.assertPayloadAccess();
          const pass = await passphraseOfKey(deps.keys, job.caller, vol.encryption_key_id!);
          try {
            key = (await luks.unlock(pass, { forWrite: true })).key;
          } finally {
            pass.wipe();
          }
        }
        const offload = key ? deps.pool.sectorCrypto({ encryption: luks.encryption, keyBytes: luks.keyBytes, sectorSize: luks.sectorSize }, key.expose()) : undefined;
        let done;
        try {
          done = await resizeLuks(file, { payloadSize, allowTruncate, ...(key ? { key } : {}), ...(offload ? { cryptoOffload: offload } : {}) });
        } finally {
          await offload?.close();
        }
        await file.sync();
        ctx.progress(done.zeroBytes, done.zeroBytes);
        result = {
          volume_id: vol.id,
          format: vol.format,
          old_size: done.oldPayloadSize,
          new_size: done.newPayloadSize,
          device_size: done.newDeviceSize,
          zeroed_bytes: done.zeroBytes,
          segment: done.segment,
        };
      } finally {
        key?.wipe();
        await file.close();
      }
    }
    await deps.db.updateVolume(vol.id, { size: result.new_size as number, status: 'available' });
    return { ...result, attempts: job.attempts };
  } finally {
    await lock.release();
  }
}
