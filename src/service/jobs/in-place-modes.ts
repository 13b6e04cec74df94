/**
 * The in-place modes of the `reencrypt` action: `encrypt` (a raw volume becomes LUKS2 — or LUKS1
 * with `format: luks1`, made as LUKS2 and converted — where it lies, src/workflows/encrypt.ts:
 * the file grows by the header, the usable size stays) and
 * `decrypt` (a LUKS2 or LUKS1 volume becomes raw, src/workflows/decrypt.ts: the header is exported next to
 * the volume, the plaintext shifted to offset 0 and the file cut). Both record their progress in
 * cryptsetup 2.6's on-disk state, so a crash or kill -9 of the service resumes from the volume
 * itself, and cryptsetup could finish either.
 *
 * Phases (checkpointed): `encrypt` — the new managed key exists (its id is in the checkpoint);
 * the engine runs (or resumes) until the volume is LUKS2 (or LUKS1) under it; then the record
 * says so (the format read from the volume).
 * `decrypt` — the old key's id is in the checkpoint; the engine runs (or resumes) until the
 * volume is plain; then the record says raw and the key loses the volume (deleted when the
 * service had made it).
 */
import { existsSync } from 'node:fs';
import { FileDevice } from '../../devices/file-device.js';
import { ReencryptionInProgressError } from '../../errors.js';
import { detectFormat } from '../../images/detect.js';
import { LuksVolume } from '../../luks/index.js';
import { isLuks1Reencryption } from '../../luks/reencrypt/luks1.js';
import { luks1EncryptionRecorded } from '../../luks/reencrypt/encrypt-luks1.js';
import { encryptVolume, type EncryptReport } from '../../workflows/encrypt.js';
import { decryptVolume, defaultDecryptHeaderPath, type DecryptVolumeReport } from '../../workflows/decrypt.js';
import { VolumeLock } from '../../devices/volume-lock.js';
import type { Passphrase } from '../../secret.js';
import type { JobContext } from '../job-runner.js';
import type { JobRow, VolumeRow } from '../state-db.js';
import { newKeyPassphrase, passphraseOfKey } from '../volume-files.js';
import { volumeConsumer, type ServiceJobDeps } from './service-job.js';
import { hotzoneOf, kdfOf, type ReencryptParams } from './reencrypt-params.js';

export interface EncryptCheckpoint {
  mode: 'encrypt';
  new_key_id: string;
  new_key_owned: boolean;
  runs: number;
}

export interface DecryptCheckpoint {
  mode: 'decrypt';
  old_key_id: string;
  old_key_owned: boolean;
  runs: number;
}

/** What the volume file holds now: plain data, a LUKS volume (finished), or one with a recorded operation. */
async function fileState(path: string): Promise<'plain' | 'luks' | 'in-progress'> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const format = await detectFormat(file);
    if (format !== 'luks2' && format !== 'luks1') return 'plain';
    // A LUKS1 re-key, or an encryption to LUKS1 in any phase (a finished LUKS2 header with its token included).
    if ((await isLuks1Reencryption(file)) || (await luks1EncryptionRecorded(file, file.size))) return 'in-progress';
    const luks = await LuksVolume.open(file, { readOnly: true });
    return luks.payloadFence instanceof ReencryptionInProgressError ? 'in-progress' : 'luks';
  } catch {
    // A head that is neither plain nor a readable header: an encryption cut while it wrote the header.
    return 'in-progress';
  } finally {
    await file.close();
  }
}

async function luksOf(path: string): Promise<{ cipher: string; format: 'luks1' | 'luks2' }> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    const vol = await LuksVolume.open(file, { readOnly: true });
    return { cipher: vol.encryption, format: vol.version === 1 ? 'luks1' : 'luks2' };
  } finally {
    await file.close();
  }
}

/** `encrypt`: a raw volume becomes a LUKS2 (or LUKS1) volume under a new managed key, in place. */
export async function runEncryptInPlace(deps: ServiceJobDeps, ctx: JobContext, p: ReencryptParams, checkpoint: EncryptCheckpoint | null): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const km = deps.keys;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const lock = await VolumeLock.acquire(vol.path);
  let pass: Passphrase | undefined;
  try {
    let cp = checkpoint;
    if (!cp) {
      if (p.key && 'id' in p.key) {
        pass = await passphraseOfKey(km, job.caller, p.key.id);
        cp = { mode: 'encrypt', new_key_id: p.key.id, new_key_owned: false, runs: 0 };
      } else {
        const created = await newKeyPassphrase(km, job.caller, `volume-${vol.id}`);
        pass = created.passphrase;
        cp = { mode: 'encrypt', new_key_id: created.id, new_key_owned: true, runs: 0 };
      }
    }
    cp = { ...cp, runs: cp.runs + 1 };
    await ctx.checkpoint({ ...cp });
    pass ??= await passphraseOfKey(km, job.caller, cp.new_key_id);
    let report: EncryptReport | undefined;
    // A run killed after the engine's last header write left a finished LUKS2 volume.
    if ((await fileState(vol.path)) !== 'luks') {
      const { type: _t, sectorSize: _s, ...kdf } = kdfOf(p, p.format ?? 'luks2');
      report = await encryptVolume(vol.path, {
        passphrases: [pass],
        ...kdf,
        ...(p.format !== undefined ? { type: p.format } : {}),
        ...(p.cipher !== undefined ? { cipher: p.cipher } : {}),
        ...(p.key_size !== undefined ? { keySizeBits: p.key_size } : {}),
        ...(p.sector_size !== undefined ? { sectorSize: p.sector_size } : {}),
        ...hotzoneOf(p),
        signal: ctx.signal,
        onProgress: ({ done, total }) => ctx.progress(done, total),
      });
      if (!report.finished) throw new ReencryptionInProgressError('The encryption stopped before the end; the job resumes it.');
    }
    const { cipher, format } = await luksOf(vol.path);
    await deps.db.updateVolume(vol.id, { format, encryption_key_id: cp.new_key_id, key_owned: cp.new_key_owned, cipher, status: 'available' });
    await km.addConsumer(job.caller, cp.new_key_id, volumeConsumer(vol.id)).catch(() => {});
    ctx.progress(vol.size, vol.size);
    return {
      volume_id: vol.id,
      mode: 'encrypt',
      new_key_id: cp.new_key_id,
      format,
      cipher,
      ...(report ? { sector_size: report.sectorSize, resilience: report.resilience, rewritten_bytes: report.bytes, data_offset: report.dataOffset, recovered: report.recovered, resumed: !report.started } : { resumed: true, rewritten_bytes: 0 }),
      runs: cp.runs,
      attempts: job.attempts,
    };
  } finally {
    pass?.wipe();
    await lock.release();
  }
}

/** `decrypt`: a LUKS volume becomes a raw one with the same plaintext, in place. */
export async function runDecryptInPlace(deps: ServiceJobDeps, ctx: JobContext, p: ReencryptParams, checkpoint: DecryptCheckpoint | null): Promise<Record<string, unknown>> {
  const job = ctx.job;
  const km = deps.keys;
  const vol = (await deps.db.volume(job.volume_id!))!;
  const lock = await VolumeLock.acquire(vol.path);
  let pass: Passphrase | undefined;
  try {
    let cp: DecryptCheckpoint = checkpoint ?? { mode: 'decrypt', old_key_id: vol.encryption_key_id!, old_key_owned: vol.key_owned, runs: 0 };
    cp = { ...cp, runs: cp.runs + 1 };
    await ctx.checkpoint({ ...cp });
    let report: DecryptVolumeReport | undefined;
    // Finished by a killed run: no header copy is left and the file is no LUKS volume any more.
    const finished = !existsSync(defaultDecryptHeaderPath(vol.path)) && (await fileState(vol.path)) === 'plain';
    if (!finished) {
      pass = await passphraseOfKey(km, job.caller, cp.old_key_id);
      report = await decryptVolume(vol.path, {
        passphrases: [pass],
        ...(p.resilience !== undefined ? { resilience: p.resilience } : {}),
        ...hotzoneOf(p),
        signal: ctx.signal,
        onProgress: ({ done, total }) => ctx.progress(done, total),
      });
      if (!report.finished) throw new ReencryptionInProgressError('The decryption stopped before the end; the job resumes it.');
    }
    await deps.db.updateVolume(vol.id, { format: 'raw', encryption_key_id: null, key_owned: false, cipher: null, status: 'available' });
    await km.removeConsumer(job.caller, cp.old_key_id, volumeConsumer(vol.id)).catch(() => {});
    if (cp.old_key_owned) await km.delete(job.caller, cp.old_key_id, { force: true }).catch(() => {});
    ctx.progress(vol.size, vol.size);
    return {
      volume_id: vol.id,
      mode: 'decrypt',
      old_key_id: cp.old_key_id,
      ...(report ? { resilience: report.resilience, rewritten_bytes: report.bytes, data_shift: report.shift, recovered: report.recovered, resumed: !report.started } : { resumed: true, rewritten_bytes: 0 }),
      runs: cp.runs,
      attempts: job.attempts,
    };
  } finally {
    pass?.wipe();
    await lock.release();
  }
}

/**
 * A failed or cancelled `encrypt`: while the file is still exactly the raw volume (plain, its
 * recorded size) nothing was done — `available`, and a key the job made is deleted. Anything
 * else (a recorded encryption, a grown file) is `error`: `{resume: true}` finishes it.
 */
export async function cleanupEncryptInPlace(deps: ServiceJobDeps, job: JobRow, v: VolumeRow): Promise<void> {
  const cp = job.checkpoint as EncryptCheckpoint | null;
  const untouched = (await fileState(v.path).catch(() => 'in-progress' as const)) === 'plain' && (await fileSize(v.path)) === v.size;
  if (untouched && cp?.new_key_owned) await deps.keys.delete(job.caller, cp.new_key_id, { force: true }).catch(() => undefined);
  await deps.db.updateVolume(v.id, { status: untouched ? 'available' : 'error' });
}

/**
 * A failed or cancelled `decrypt`: while the volume still holds its own header with no recorded
 * operation and no header copy waits next to it, it is `available` as before; else `error`.
 */
export async function cleanupDecryptInPlace(deps: ServiceJobDeps, _job: JobRow, v: VolumeRow): Promise<void> {
  const untouched = !existsSync(defaultDecryptHeaderPath(v.path)) && (await fileState(v.path).catch(() => 'in-progress' as const)) === 'luks';
  await deps.db.updateVolume(v.id, { status: untouched ? 'available' : 'error' });
}

async function fileSize(path: string): Promise<number> {
  const file = await FileDevice.open(path, { readOnly: true });
  try {
    return file.size;
  } finally {
    await file.close();
  }
}
